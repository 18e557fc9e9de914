"""Figures comparing teacher and student explanations (matplotlib, Agg, no pyplot state).

Every function builds a :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so nothing
is registered globally, nothing needs closing, and ``plt.show`` is never called; the caller owns
the returned figure (let it be garbage-collected, or pass it to a logger). Each figure gets its
own Agg canvas; the process-wide matplotlib backend is not changed.

Decisions
---------
* Layout of :func:`explanation_figure`: one row per sample, columns ``input | teacher | student``.
  Signals and tabular rows get one axes per cell (``fig.axes`` holds ``N * 3`` axes, row-major).
  Images are one RGB mosaic (white gaps between cells) drawn with Pillow, labels and title
  included, by :func:`explanation_image`; the figure shows that raster in one axes, axis off.
  About 7 ms instead of 50 ms through matplotlib axes, which matters because the callback draws
  one per method during ``fit``. :func:`explanation_image` gives every kind as an RGB array.
* Maps use the diverging ``RdBu_r`` colormap (red = positive evidence) with limits
  ``[-m, m]``, ``m`` the largest ``|value|`` of the teacher *and* student maps of that row, so
  the two are on one scale (in image strips each row is divided by its ``m`` and the colour
  limits are ``[-1, 1]``).
* Images: maps summed over channels; a 3-channel input is shown in colour (min-max scaled per
  sample), any other channel count as the channel mean in gray.
* Signals: each column draws the input (one line per channel); the teacher / student columns add
  the channel-summed map as a coloured band behind the lines.
* Tabular: horizontal bars for the 10 features with the largest ``max(|t| / max|t|, |s| / max|s|)``
  (the same features, in that order, in all three columns; the input column shows their values).
  ``feature_names`` are only used for tabular inputs (ignored otherwise); default ``x0, x1, ...``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "INPUT_KINDS",
    "TOP_FEATURES",
    "input_kind",
    "explanation_figure",
    "explanation_image",
    "figure_to_array",
    "save_figure",
    "agreement_over_epochs_figure",
]

INPUT_KINDS: dict[int, str] = {2: "tabular", 3: "signal", 4: "image"}
#: features shown per row for tabular inputs
TOP_FEATURES = 10
CMAP = "RdBu_r"
COLUMNS = ("input", "teacher", "student")

ArrayLike = Tensor | np.ndarray


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def input_kind(inputs: ArrayLike) -> str:
    """``"tabular"`` for ``[N, F]``, ``"signal"`` for ``[N, C, L]``, ``"image"`` for ``[N, C, H, W]``."""
    shape = tuple(inputs.shape)
    if len(shape) not in INPUT_KINDS:
        raise ValueError(f"inputs must be [N, F], [N, C, L] or [N, C, H, W], got shape {shape}")
    return INPUT_KINDS[len(shape)]


def _row_limit(teacher: np.ndarray, student: np.ndarray) -> float:
    """Symmetric colour / axis limit shared by one row's two maps."""
    m = float(np.nanmax(np.abs(np.concatenate([teacher.ravel(), student.ravel()])), initial=0.0))
    return m if np.isfinite(m) and m > 0 else 1.0


# ------------------------------------------------------------------------------------------
# per-kind row painters
# ------------------------------------------------------------------------------------------
def _signal_row(axes: list[Axes], x: np.ndarray, t: np.ndarray, s: np.ndarray, **_: object) -> None:
    t, s = t.sum(0), s.sum(0)
    m = _row_limit(t, s)
    steps = np.arange(x.shape[1])
    lo, hi = float(x.min()), float(x.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    for col, ax in enumerate(axes):
        if col > 0:
            band = (t, s)[col - 1][None, :]
            extent = (-0.5, x.shape[1] - 0.5, lo - pad, hi + pad)
            ax.imshow(band, cmap=CMAP, vmin=-m, vmax=m, aspect="auto", extent=extent, alpha=0.8)
        for channel in x:
            ax.plot(steps, channel, color="black" if col else None, linewidth=0.9)
        ax.set_xlim(-0.5, x.shape[1] - 0.5)
        ax.set_ylim(lo - pad, hi + pad)


def _top_features(t: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features with the largest scale-free magnitude in either map."""
    scale = lambda a: np.abs(a) / (np.nanmax(np.abs(a), initial=0.0) or 1.0)  # noqa: E731
    score = np.nan_to_num(np.maximum(scale(t), scale(s)), nan=0.0)
    return np.argsort(-score, kind="stable")[:k]


def _tabular_row(
    axes: list[Axes], x: np.ndarray, t: np.ndarray, s: np.ndarray, feature_names: list[str], **_: object
) -> None:
    top = _top_features(t, s, TOP_FEATURES)
    m = _row_limit(t[top], s[top])
    pos = np.arange(len(top))
    axes[0].barh(pos, x[top], color="0.5")
    for ax, a in zip(axes[1:], (t, s)):
        values = a[top]
        ax.barh(pos, values, color=np.where(values >= 0, "tab:red", "tab:blue"))
        ax.set_xlim(-1.05 * m, 1.05 * m)
        ax.axvline(0.0, color="black", linewidth=0.6)
    for col, ax in enumerate(axes):
        ax.set_yticks(pos)
        ax.set_yticklabels([feature_names[j] for j in top] if col == 0 else [], fontsize=7)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)


_PAINTERS = {"signal": _signal_row, "tabular": _tabular_row}
_CELL_SIZE = {"signal": (3.6, 1.8), "tabular": (3.6, 2.6)}


# ------------------------------------------------------------------------------------------
# public figures
# ------------------------------------------------------------------------------------------
def _new_figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure with its own Agg canvas."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_explanation_args(
    x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, feature_names: list[str] | None
) -> str:
    kind = input_kind(x)
    if t.shape != x.shape or s.shape != x.shape:
        raise ValueError(
            f"teacher and student maps must have the inputs' shape {x.shape}, got {t.shape} and {s.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("explanation_figure needs at least one sample")
    if labels is not None and len(labels) != x.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for {x.shape[0]} samples")
    if kind == "tabular" and feature_names is not None and len(feature_names) != x.shape[1]:
        raise ValueError(f"feature_names has {len(feature_names)} names for {x.shape[1]} features")
    return kind


def explanation_figure(
    inputs: ArrayLike,
    teacher_maps: ArrayLike,
    student_maps: ArrayLike,
    labels: list[str] | None = None,
    feature_names: list[str] | None = None,
    title: str = "",
) -> Figure:
    """One row per sample, columns input | teacher map | student map (see the module notes)."""
    x, t, s = _numpy(inputs), _numpy(teacher_maps), _numpy(student_maps)
    kind = _check_explanation_args(x, t, s, labels, feature_names)
    if kind == "image":
        return _raster_figure(_image_mosaic(x, t, s, labels, title))
    if kind == "tabular" and feature_names is None:
        feature_names = [f"x{j}" for j in range(x.shape[1])]
    width, height = _CELL_SIZE[kind]
    n = x.shape[0]
    fig = _new_figure((3 * width, n * height + (0.4 if title else 0.0)))
    grid = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        row = list(grid[i])
        _PAINTERS[kind](row, x[i], t[i], s[i], feature_names=feature_names)
        if labels is not None:
            row[0].set_ylabel(labels[i], fontsize=8)
    for ax, name in zip(grid[0], COLUMNS):
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _to_rgb(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB ``[N, H, W, 3]`` panels: the input (colour or gray) and the two maps, each row of maps
    divided by its shared limit and coloured with ``CMAP`` on ``[-1, 1]``."""
    import matplotlib

    if x.shape[1] == 3:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - lo
        shown = np.transpose((x - lo) / np.where(span > 0, span, 1.0), (0, 2, 3, 1))
    else:
        gray = x.mean(1)
        lo, hi = gray.min(axis=(1, 2), keepdims=True), gray.max(axis=(1, 2), keepdims=True)
        shown = np.repeat(((gray - lo) / np.where(hi > lo, hi - lo, 1.0))[..., None], 3, axis=-1)
    t, s = t.sum(1), s.sum(1)
    limits = np.array([_row_limit(ti, si) for ti, si in zip(t, s)], dtype=np.float32)[:, None, None]
    cmap = matplotlib.colormaps[CMAP]
    paint = lambda maps: cmap(np.nan_to_num((maps / limits + 1.0) / 2.0, nan=0.5))[..., :3]  # noqa: E731
    return np.clip(shown, 0.0, 1.0), paint(t), paint(s)


def explanation_image(
    inputs: ArrayLike,
    teacher_maps: ArrayLike,
    student_maps: ArrayLike,
    labels: list[str] | None = None,
    feature_names: list[str] | None = None,
    title: str = "",
) -> np.ndarray:
    """:func:`explanation_figure` as an RGB array ``[H, W, 3]`` (uint8); images skip matplotlib."""
    x, t, s = _numpy(inputs), _numpy(teacher_maps), _numpy(student_maps)
    if _check_explanation_args(x, t, s, labels, feature_names) == "image":
        return _image_mosaic(x, t, s, labels, title)
    return figure_to_array(explanation_figure(x, t, s, labels, feature_names, title))


def _mosaic(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, int]:
    """Float RGB mosaic in ``[0, 1]``: rows are samples, columns input | teacher | student, white
    gaps of ``gap`` pixels between cells; returns it and ``gap``."""
    panels = _to_rgb(x, t, s)
    n, h, w = panels[0].shape[:3]
    gap = max(1, h // 8)
    mosaic = np.ones((n * (h + gap) - gap, 3 * (w + gap) - gap, 3), dtype=np.float32)
    for i in range(n):
        for j, panel in enumerate(panels):
            mosaic[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = panel[i]
    return mosaic, gap


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _image_mosaic(
    x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str, width: int = 500
) -> np.ndarray:
    """The image mosaic drawn with Pillow, with column names, row labels and title: ``[H, W, 3]``."""
    from PIL import Image, ImageDraw

    mosaic, gap = _mosaic(x, t, s)
    h, w = x.shape[2:]
    font, title_font = _font(13), _font(15)
    left = 8 + (max(round(font.getlength(label)) for label in labels) + 8 if labels else 0)
    top = 24 + (26 if title else 0)  # the column names (and the title) above the mosaic
    scale = (width - left - 8) / mosaic.shape[1]
    scale = float(int(scale)) if scale >= 1 else scale  # whole pixels when enlarging
    size = (max(1, round(mosaic.shape[1] * scale)), max(1, round(mosaic.shape[0] * scale)))
    picture = Image.fromarray(np.round(mosaic * 255).astype(np.uint8))
    picture = picture.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)
    canvas = Image.new("RGB", (width, top + size[1] + 8), "white")
    canvas.paste(picture, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((width / 2, 8), title, fill="black", font=title_font, anchor="mt")
    for j, name in enumerate(COLUMNS):
        draw.text((left + (j * (w + gap) + w / 2) * scale, top - 5), name, fill="black", font=font, anchor="mb")
    for i, label in enumerate(labels or []):
        draw.text((left - 8, top + (i * (h + gap) + h / 2) * scale), label, fill="black", font=font, anchor="rm")
    return np.asarray(canvas)


def _raster_figure(image: np.ndarray, dpi: int = 100) -> Figure:
    """A figure of exactly ``image``'s pixels at ``dpi``: one axes filling it, axis off (an axes,
    not ``figimage``, so that ``bbox_inches="tight"``, as Jupyter renders, keeps the picture)."""
    fig = Figure(figsize=(image.shape[1] / dpi, image.shape[0] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 RGB array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. ``.png``); parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


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
    fig = _new_figure((6.0, 3.6))
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
