"""Figures comparing teacher and student explanations (matplotlib, Agg, no pyplot state).

Every function builds a :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so nothing
is registered globally, nothing needs closing, and ``plt.show`` is never called; the caller owns
the returned figure (let it be garbage-collected, or pass it to a logger). Each figure gets its
own Agg canvas; the process-wide matplotlib backend is not changed.

Decisions
---------
* Layout of :func:`explanation_figure`: one row per sample, columns ``input | teacher | student``.
  How a row is drawn is the input modality's business (:class:`kdlight.core.modality.Modality`):
  images are one RGB mosaic drawn with Pillow (about 7 ms instead of 50 ms through matplotlib
  axes, which matters because the callback draws one per method during ``fit``); signals and
  tabular rows drawn by the built-in :class:`~kdlight.core.modality.Signal` /
  :class:`~kdlight.core.modality.Tabular` are drawn with Pillow too
  (below: 2-5 ms instead of 0.4-1.2 s). Those figures are one axes showing the picture; a modality
  that draws its own rows of axes (overrides ``draw_row``) keeps them. :func:`explanation_image`
  gives every modality as an RGB array.
* Signals and tabular rows (Pillow, width 900 px): a title, the column names, then one row per
  sample under a caption (the row label and the row's map limit ``m``). Signals ``[C, L]``: each
  cell plots the input, one line per channel (input cell: black, then ``tab10`` colours; map
  cells: black) on the row's y range (written left of the input cell); behind the lines of the
  teacher / student cells, time step ``i`` is the stripe ``[i, i + 1) / L`` of the cell's width,
  ``RdBu_r`` at ``value / m`` (80 % over white); a zero or NaN step stays white. Tabular ``[F]``:
  the ``TOP_FEATURES`` features with the largest scale-free magnitude in either map (the same
  features, in that order from the top, in all three cells, their names on the left): gray bars
  of the inputs, red (positive) / blue (negative) bars of the maps, ``|value| / (1.05 m)`` of the
  half-cell long from the zero line; axis limits under the cells.
* Maps use the diverging ``RdBu_r`` colormap (red = positive evidence) with limits
  ``[-m, m]``, ``m`` the largest ``|value|`` of the teacher *and* student maps of that row, so
  the two are on one scale.
* ``modality``: the data module's (``datamodule.modality``); without it, one is guessed from the
  inputs' rank (:meth:`Modality.for_inputs`, with ``feature_names`` for tabular inputs).
* Token ids (:class:`~kdlight.core.modality.Text`) stay integers; their figure is each sentence with
  its tokens shaded by the teacher's and the student's maps (one row per model, padding never
  shown), also as HTML (:func:`explanation_html`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from kdlight.core.modality import Modality, Signal, Tabular, Text, figure_to_array
from kdlight.core.modality.base import CMAP, COLUMNS, new_figure, row_limit
from kdlight.core.modality.image import _raster_figure
from kdlight.core.modality.tabular import TOP_FEATURES, _top_features

__all__ = [
    "explanation_figure",
    "explanation_image",
    "explanation_html",
    "figure_to_array",
    "agreement_over_epochs_figure",
]

ArrayLike = Tensor | np.ndarray


def _numpy(x: ArrayLike, ids: bool = False) -> np.ndarray:
    """Float32 values; with ``ids``, int64 token ids (never cast to float)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        return x.long().numpy() if ids else x.float().numpy()
    return np.asarray(x, dtype=np.int64 if ids else np.float32)


def _prepare(
    inputs: ArrayLike,
    teacher_maps: ArrayLike,
    student_maps: ArrayLike,
    labels: list[str] | None,
    feature_names: list[str] | None,
    modality: Modality | None,
) -> tuple[Modality, np.ndarray, np.ndarray, np.ndarray]:
    """The modality and the three arrays, checked."""
    modality = modality if modality is not None else Modality.for_inputs(inputs, feature_names)
    x, t, s = _numpy(inputs, ids=isinstance(modality, Text)), _numpy(teacher_maps), _numpy(student_maps)
    modality.check(x.shape)
    if t.shape != x.shape or s.shape != x.shape:
        raise ValueError(f"teacher and student maps must have the inputs' shape {x.shape}, got {t.shape} and {s.shape}")
    if x.shape[0] == 0:
        raise ValueError("explanation_figure needs at least one sample")
    if labels is not None and len(labels) != x.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for {x.shape[0]} samples")
    return modality, x, t, s


def _pillow_rows(modality: Modality, x: np.ndarray, t, s, labels, title) -> np.ndarray | None:
    """The Pillow picture of signals / tabular rows whose modality draws the built-in rows of axes
    (``None``: the modality draws its figure itself)."""
    kind = type(modality)
    if (
        kind.explanation_image is not Modality.explanation_image
        or kind.explanation_figure is not Modality.explanation_figure
    ):
        return None
    if kind.draw_row is Signal.draw_row:
        return _signal_image(x, t, s, labels, title)
    if kind.draw_row is Tabular.draw_row:
        return _tabular_image(x, t, s, labels, title, modality.names(x.shape[1]))
    return None


def explanation_figure(
    inputs: ArrayLike,
    teacher_maps: ArrayLike,
    student_maps: ArrayLike,
    labels: list[str] | None = None,
    feature_names: list[str] | None = None,
    title: str = "",
    *,
    modality: Modality | None = None,
) -> Figure:
    """One row per sample, columns input | teacher map | student map (see the module notes).
    ``feature_names`` only serves the guessed tabular modality (give ``modality`` instead)."""
    modality, x, t, s = _prepare(inputs, teacher_maps, student_maps, labels, feature_names, modality)
    picture = _pillow_rows(modality, x, t, s, labels, title)
    return _raster_figure(picture) if picture is not None else modality.explanation_figure(x, t, s, labels, title)


def explanation_image(
    inputs: ArrayLike,
    teacher_maps: ArrayLike,
    student_maps: ArrayLike,
    labels: list[str] | None = None,
    feature_names: list[str] | None = None,
    title: str = "",
    *,
    modality: Modality | None = None,
) -> np.ndarray:
    """:func:`explanation_figure` as an RGB array ``[H, W, 3]`` (uint8); the built-in modalities
    skip matplotlib."""
    modality, x, t, s = _prepare(inputs, teacher_maps, student_maps, labels, feature_names, modality)
    picture = _pillow_rows(modality, x, t, s, labels, title)
    return picture if picture is not None else modality.explanation_image(x, t, s, labels, title)


def explanation_html(
    inputs: ArrayLike,
    teacher_maps: ArrayLike,
    student_maps: ArrayLike,
    labels: list[str] | None = None,
    title: str = "",
    *,
    modality: Modality,
) -> str:
    """:func:`explanation_figure` as a self-contained HTML string, for modalities that write one
    (:meth:`kdlight.core.modality.Text.explanation_html`: shaded tokens with their values)."""
    write = getattr(modality, "explanation_html", None)
    if write is None:
        raise ValueError(f"{modality.name} inputs have no HTML figure; use explanation_image")
    modality, x, t, s = _prepare(inputs, teacher_maps, student_maps, labels, None, modality)
    return write(x, t, s, labels, title)


def agreement_over_epochs_figure(frame, metrics: list[str] | None = None, title: str = "") -> Figure:
    """One line per metric column of ``frame`` against its ``epoch`` column.

    ``metrics`` defaults to every numeric column other than ``epoch``; several rows per epoch
    (e.g. seeds) are averaged.
    """
    if "epoch" not in frame.columns:
        raise ValueError(f"frame needs an 'epoch' column, has {list(frame.columns)}")
    if metrics is None:
        metrics = [c for c in frame.select_dtypes("number").columns if c != "epoch"]
    missing = [m for m in metrics if m not in frame.columns]
    if missing or not metrics:
        raise ValueError(f"metric columns {missing or metrics} not usable; frame has {list(frame.columns)}")
    means = frame.groupby("epoch")[list(metrics)].mean().sort_index()
    fig = new_figure((6.0, 3.6))
    ax = fig.add_subplot()
    for name in metrics:
        ax.plot(means.index, means[name], marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


# ------------------------------------------------------------------------------------------
# signals and tabular rows drawn with Pillow
# ------------------------------------------------------------------------------------------

#: width of the signal and tabular figures, px
_WIDTH = 900
_MARGIN, _GAP, _HEAD, _TITLE, _CAPTION = 8, 14, 22, 26, 18
_SIGNAL_HEIGHT, _BAR_PITCH, _BAR_HEIGHT, _TICKS = 100, 16, 11, 15
_BAND_ALPHA = 0.8
_FRAME, _INPUT_BAR, _RED, _BLUE = (170, 170, 170), (128, 128, 128), (214, 39, 40), (31, 119, 180)
#: channel colours of the input cell: black, then tab10 without its blue
_CHANNELS = [(0, 0, 0), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194)]


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


@lru_cache(maxsize=4096)
def _glyphs(text: str, size: int, anchor: str):
    """``text`` rendered once as an 8-bit mask, and its offset from the anchor point (feature
    names, column names and most numbers repeat across rows and figures; rendering is the cost)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text, anchor=anchor)
    mask = PILImage.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor=anchor)
    return mask, left, top


def _write(canvas, xy: tuple[float, float], text: str, size: int, anchor: str = "la") -> None:
    """Black ``text`` at ``xy`` (Pillow's ``anchor``) from the cached glyphs."""
    mask, left, top = _glyphs(text, size, anchor)
    canvas.paste((0, 0, 0), (round(xy[0]) + left, round(xy[1]) + top), mask)


def _text_width(text: str, size: int) -> int:
    return _glyphs(text, size, "la")[0].width


def _number(v: float) -> str:
    return f"{v:.3g}"


def _canvas(rows: int, row_height: int, left: int, title: str):
    """A white canvas with the title and column names; returns it, its draw, the cells' x origins,
    the cell width and the y of the first row's caption."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    top = _HEAD + (_TITLE if title else 0)
    height = top + rows * (_CAPTION + row_height) + _MARGIN
    canvas = PILImage.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(canvas)
    cell = (_WIDTH - left - _MARGIN - 2 * _GAP) // 3
    xs = [left + j * (cell + _GAP) for j in range(3)]
    if title:
        _write(canvas, (_WIDTH / 2, 6), title, 15, "mt")
    for x0, name in zip(xs, COLUMNS):
        _write(canvas, (x0 + cell / 2, top - 5), name, 13, "mb")
    return canvas, draw, xs, cell, top


def _caption(canvas, x: int, y: int, label: str | None, limit: float) -> None:
    text = f"{label}    " if label else ""
    _write(canvas, (x, y + _CAPTION - 4), f"{text}map limit ±{_number(limit)}", 12, "ld")


def _band(values: np.ndarray, limit: float, width: int) -> np.ndarray:
    """``[width, 3]`` uint8 stripes of ``values`` (one per step) coloured on ``[-limit, limit]``."""
    import matplotlib

    steps = (np.arange(width) * len(values)) // width
    v = np.nan_to_num(values[steps] / limit, nan=0.0)
    colours = matplotlib.colormaps[CMAP]((np.clip(v, -1.0, 1.0) + 1.0) / 2.0)[:, :3]
    colours = _BAND_ALPHA * colours + (1.0 - _BAND_ALPHA)
    colours[v == 0] = 1.0
    return np.round(colours * 255).astype(np.uint8)


def _signal_image(x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str) -> np.ndarray:
    """Signals ``x, t, s`` ``[N, C, L]`` as an RGB array ``[H, _WIDTH, 3]`` (see the module notes)."""
    from PIL import Image as PILImage

    n, channels, length = x.shape
    ranges = []
    for i in range(n):
        lo, hi = float(np.nanmin(x[i], initial=np.inf)), float(np.nanmax(x[i], initial=-np.inf))
        lo, hi = (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else (0.0, 0.0)
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ranges.append((lo - pad, hi + pad))
    left = _MARGIN + 4 + max(_text_width(_number(v), 11) for r in ranges for v in r)
    canvas, draw, xs, cell, top = _canvas(n, _SIGNAL_HEIGHT, left, title)
    steps_x = (np.arange(length) + 0.5) * cell / length
    for i in range(n):
        ts, ss = t[i].sum(0), s[i].sum(0)
        limit = row_limit(ts, ss)
        y0 = top + i * (_CAPTION + _SIGNAL_HEIGHT)
        _caption(canvas, xs[0], y0, labels[i] if labels else None, limit)
        y0 += _CAPTION
        for col, maps in ((1, ts), (2, ss)):
            stripe = PILImage.fromarray(np.repeat(_band(maps, limit, cell)[None], _SIGNAL_HEIGHT, axis=0))
            canvas.paste(stripe, (xs[col], y0))
        lo, hi = ranges[i]
        ys = y0 + (hi - np.nan_to_num(x[i], nan=lo)) / (hi - lo) * (_SIGNAL_HEIGHT - 1)
        for col in range(3):
            for c in range(channels):
                colour = _CHANNELS[c % len(_CHANNELS)] if col == 0 else (0, 0, 0)
                points = list(zip((xs[col] + steps_x).tolist(), ys[c].tolist()))
                draw.line(points, fill=colour, width=1) if length > 1 else draw.point(points, fill=colour)
            draw.rectangle((xs[col], y0, xs[col] + cell - 1, y0 + _SIGNAL_HEIGHT - 1), outline=_FRAME)
        _write(canvas, (xs[0] - 4, y0), _number(hi), 11, "rt")
        _write(canvas, (xs[0] - 4, y0 + _SIGNAL_HEIGHT), _number(lo), 11, "rb")
    return np.asarray(canvas)


def _bars(draw, x0: int, y0: int, cell: int, values: np.ndarray, lo: float, hi: float, colours) -> None:
    """Horizontal bars of ``values`` (top to bottom) on the axis ``[lo, hi]`` with a zero line."""
    scale = (cell - 1) / (hi - lo)
    zero = x0 + round(-lo * scale)
    for k, v in enumerate(np.nan_to_num(values, nan=0.0)):
        end = x0 + round((v - lo) * scale)
        if end != zero:
            y = y0 + 3 + k * _BAR_PITCH
            draw.rectangle((min(zero, end), y, max(zero, end) - 1, y + _BAR_HEIGHT - 1), fill=colours(v))
    draw.line((zero, y0, zero, y0 + len(values) * _BAR_PITCH + 3), fill="black", width=1)


def _input_axis(values: np.ndarray) -> tuple[float, float]:
    """The input cell's axis: from 0 to the values, 5 % wider on the sides that hold bars."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    if hi == lo:
        return -1.0, 1.0
    pad = 0.05 * (hi - lo)
    return (lo - pad if lo < 0 else 0.0), (hi + pad if hi > 0 else 0.0)


def _tabular_image(
    x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str, names: list[str]
) -> np.ndarray:
    """Tabular rows ``x, t, s`` ``[N, F]`` with feature ``names`` as an RGB array ``[H, _WIDTH, 3]``
    (see the module notes)."""
    n, features = x.shape
    k = min(TOP_FEATURES, features)
    tops = [_top_features(t[i], s[i], TOP_FEATURES) for i in range(n)]
    left = _MARGIN + 6 + max(_text_width(names[j], 11) for top in tops for j in top)
    row_height = k * _BAR_PITCH + 4 + _TICKS
    canvas, draw, xs, cell, top = _canvas(n, row_height, left, title)
    sign = lambda v: _RED if v > 0 else _BLUE  # noqa: E731
    for i, shown in enumerate(tops):
        limit = row_limit(t[i][shown], s[i][shown])
        y0 = top + i * (_CAPTION + row_height)
        _caption(canvas, xs[0], y0, labels[i] if labels else None, limit)
        y0 += _CAPTION
        values = np.nan_to_num(x[i][shown], nan=0.0)
        axes = [_input_axis(values), (-1.05 * limit, 1.05 * limit), (-1.05 * limit, 1.05 * limit)]
        for col, (vals, colours) in enumerate(
            ((values, lambda v: _INPUT_BAR), (t[i][shown], sign), (s[i][shown], sign))
        ):
            a, b = axes[col]
            _bars(draw, xs[col], y0, cell, vals, a, b, colours)
            bottom = y0 + k * _BAR_PITCH + 4
            draw.rectangle((xs[col], y0, xs[col] + cell - 1, bottom - 1), outline=_FRAME)
            ticks = ((a, "lt"), (b, "rt")) if col == 0 else ((-limit, "lt"), (0.0, "mt"), (limit, "rt"))
            for v, anchor in ticks:
                px = xs[col] + (v - a) / (b - a) * (cell - 1)
                _write(canvas, (px, bottom + 2), _number(v), 11, anchor)
        for r, j in enumerate(shown):
            _write(canvas, (xs[0] - 6, y0 + 3 + r * _BAR_PITCH + _BAR_HEIGHT / 2), names[j], 11, "rm")
    return np.asarray(canvas)
