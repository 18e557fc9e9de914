"""Token explanation figures: each sentence with its tokens shaded by teacher's and student's maps.

Used by :class:`kdlight.core.modality.Text` (its ``explanation_image`` / ``explanation_html``).

Decisions
---------
* One block per probe: a caption (the row label, e.g. ``y=1 t=1 s=0``, and the colour limit), then
  a ``teacher`` row and a ``student`` row of the same tokens at the same places, so a token's two
  shades sit one above the other. Padding is never drawn.
* Colours: ``CMAP`` (``RdBu_r``: red positive, blue negative, white zero) on ``[-m, m]``, ``m``
  the largest ``|value|`` of the probe's teacher and student maps over its real tokens
  (:func:`~kdlight.core.modality.base.row_limit`); dark shades get white text.
* The PNG is drawn with Pillow (rectangles and each token's cached glyphs pasted on one canvas,
  no matplotlib axes: about 20 ms for 8 probes of 40 tokens). Rows wrap at the figure's width; a probe longer than
  :data:`MAX_TOKENS_SHOWN` tokens is cut there and ends with an ellipsis. The HTML shows every
  real token (the browser wraps); each token's ``title`` holds its value.
* Tokens are the vocabulary strings (:meth:`Text.decode`), control characters shown escaped
  (``\\n``), HTML-escaped in the HTML.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from kdlight.core.modality.base import CMAP, row_limit

__all__ = ["MAX_TOKENS_SHOWN", "token_image", "token_html"]

#: tokens of one probe drawn in the PNG; longer probes end with an ellipsis (the HTML shows all)
MAX_TOKENS_SHOWN = 64
ELLIPSIS = "…"
ROLES = ("teacher", "student")
_WIDTH, _MARGIN, _ROLE_WIDTH, _LINE, _FONT_SIZE = 900, 8, 64, 20, 13

#: ``decode(ids) -> strings`` of one sequence's real tokens
Decode = Callable[[np.ndarray], list[str]]


def _shown(token: str) -> str:
    """A token as printed: control characters escaped, an empty token as ``∅``."""
    shown = token.encode("unicode_escape").decode("ascii") if not token.isprintable() else token
    return shown or "∅"


def _probes(x: np.ndarray, t: np.ndarray, s: np.ndarray, valid: np.ndarray, decode: Decode):
    """Per probe: its token strings, both maps on its real tokens and their shared limit."""
    for i in range(x.shape[0]):
        tokens = [_shown(token) for token in decode(x[i])]
        ti, si = t[i][valid[i]], s[i][valid[i]]
        yield tokens, ti, si, row_limit(ti, si)


def _colours(values: np.ndarray, limit: float) -> np.ndarray:
    """RGB ``[n, 3]`` floats in ``[0, 1]`` of ``values`` on ``[-limit, limit]`` (NaN: white)."""
    import matplotlib

    scaled = np.nan_to_num((values / limit + 1.0) / 2.0, nan=0.5)
    return matplotlib.colormaps[CMAP](np.clip(scaled, 0.0, 1.0))[:, :3]


def _ink(rgb: np.ndarray) -> str:
    """Black text on light shades, white on dark ones."""
    return "white" if float(rgb @ np.array([0.299, 0.587, 0.114])) < 0.5 else "black"


@lru_cache(maxsize=2)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8192)
def _glyphs(token: str):
    """``token`` rendered once as an 8-bit mask one line high (pasted in any ink; a probe's
    teacher and student rows, and later figures, reuse it: rendering is most of a figure's time)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    font = _font(_FONT_SIZE)
    mask = PILImage.new("L", (max(1, round(font.getlength(token))), _LINE))
    ImageDraw.Draw(mask).text((0, _LINE / 2), token, fill=255, font=font, anchor="lm")
    return mask


def _layout(widths: list[float], left: float, right: float) -> list[tuple[float, int]]:
    """``(x, line)`` of each token box, wrapping at ``right``."""
    places, x, line = [], left, 0
    for width in widths:
        if x + width > right and x > left:
            x, line = left, line + 1
        places.append((x, line))
        x += width + 2
    return places


def token_image(
    x: np.ndarray,
    t: np.ndarray,
    s: np.ndarray,
    valid: np.ndarray,
    decode: Decode,
    labels: list[str] | None,
    title: str,
) -> np.ndarray:
    """The figure as an RGB array ``[H, W, 3]`` (uint8); see the module notes."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    font = _font(_FONT_SIZE)
    left, right = _MARGIN + _ROLE_WIDTH, _WIDTH - _MARGIN
    blocks, height = [], _MARGIN + (_LINE + 6 if title else 0)
    for i, (tokens, ti, si, limit) in enumerate(_probes(x, t, s, valid, decode)):
        cut = len(tokens) > MAX_TOKENS_SHOWN
        tokens = tokens[:MAX_TOKENS_SHOWN] + ([ELLIPSIS] if cut else [])
        widths = [_glyphs(token).width + 6 for token in tokens]
        places = _layout(widths, left, right)
        lines = places[-1][1] + 1 if places else 1
        boxes = [(px, line, width) for (px, line), width in zip(places, widths)]
        blocks.append((height, tokens, boxes, lines, ti[:MAX_TOKENS_SHOWN], si[:MAX_TOKENS_SHOWN], limit, i))
        height += _LINE * (1 + 2 * lines) + 10
    canvas = PILImage.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_WIDTH / 2, _MARGIN), title, fill="black", font=_font(_FONT_SIZE + 2), anchor="mt")
    for top, tokens, boxes, lines, ti, si, limit, i in blocks:
        caption = f"{labels[i] if labels else f'#{i}'}    |attribution| <= {limit:.3g}"
        draw.text((_MARGIN, top + _LINE / 2), caption, fill=(60, 60, 60), font=font, anchor="lm")
        for r, values in enumerate((ti, si)):
            row_top = top + _LINE * (1 + r * lines)
            draw.text((_MARGIN, row_top + _LINE / 2), ROLES[r], fill=(90, 90, 90), font=font, anchor="lm")
            colours = _colours(values, limit)
            fills = [tuple(rgb) for rgb in np.round(colours * 255).astype(int).tolist()]
            inks = [_ink(rgb) for rgb in colours] + ["black"]  # the ellipsis has no shade
            for j, (token, (px, line, width)) in enumerate(zip(tokens, boxes)):
                y = row_top + line * _LINE
                if j < len(fills):
                    draw.rectangle((px, y + 1, px + width, y + _LINE - 1), fill=fills[j])
                canvas.paste(inks[min(j, len(fills))], (round(px) + 3, round(y)), _glyphs(token))
    return np.asarray(canvas)


_STYLE = (
    "<style>.kd-text{font-family:sans-serif;font-size:13px;line-height:1.9}"
    ".kd-text .kd-cap{color:#3c3c3c;margin-top:8px}.kd-text .kd-role{display:inline-block;width:5em;color:#5a5a5a}"
    ".kd-text .kd-tok{padding:1px 3px;margin:0 1px;border-radius:2px}</style>"
)


def token_html(
    x: np.ndarray,
    t: np.ndarray,
    s: np.ndarray,
    valid: np.ndarray,
    decode: Decode,
    labels: list[str] | None,
    title: str,
) -> str:
    """The figure as a self-contained HTML string: one ``<span>`` per real token with its shade
    as background and ``title="<role>: <value>"``; see the module notes."""
    parts = [_STYLE, '<div class="kd-text">']
    if title:
        parts.append(f"<div><b>{html.escape(title)}</b></div>")
    for i, (tokens, ti, si, limit) in enumerate(_probes(x, t, s, valid, decode)):
        label = html.escape(labels[i]) if labels else f"#{i}"
        parts.append(f'<div class="kd-cap">{label} &nbsp; |attribution| &le; {limit:.3g}</div>')
        for role, values in zip(ROLES, (ti, si)):
            fills = np.round(_colours(values, limit) * 255).astype(int)
            spans = "".join(
                f'<span class="kd-tok" style="background:#{r:02x}{g:02x}{b:02x};color:{_ink(np.array([r, g, b]) / 255)}"'
                f' title="{role}: {value:+.4g}">{html.escape(token)}</span>'
                for token, value, (r, g, b) in zip(tokens, values.tolist(), fills.tolist())
            )
            parts.append(f'<div><span class="kd-role">{role}</span>{spans}</div>')
    parts.append("</div>")
    return "".join(parts)
