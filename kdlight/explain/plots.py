"""Figures comparing teacher and student explanations (matplotlib, Agg, no pyplot state).

Every function builds a :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so nothing
is registered globally, nothing needs closing, and ``plt.show`` is never called; the caller owns
the returned figure (let it be garbage-collected, or pass it to a logger). Each figure gets its
own Agg canvas; the process-wide matplotlib backend is not changed.

Decisions
---------
* Layout of :func:`explanation_figure`: one row per sample, columns ``input | teacher | student``.
  Signals and tabular rows get one axes per cell (``fig.axes`` holds ``N * 3`` axes, row-major).
  Images are drawn as three axes, one per column, each a vertical strip of the ``N`` samples
  (one white pixel row between samples): drawing three images instead of ``3 N`` axes makes the
  figure about three times cheaper, which matters because the callback draws it during ``fit``.
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
def _image_input(ax: Axes, x: np.ndarray) -> None:
    if x.shape[0] == 3:
        lo, hi = x.min(), x.max()
        ax.imshow(np.transpose((x - lo) / (hi - lo if hi > lo else 1.0), (1, 2, 0)))
    else:
        ax.imshow(x.mean(0), cmap="gray")


def _image_row(axes: list[Axes], x: np.ndarray, t: np.ndarray, s: np.ndarray, **_: object) -> None:
    t, s = t.sum(0), s.sum(0)
    m = _row_limit(t, s)
    _image_input(axes[0], x)
    for ax, a in zip(axes[1:], (t, s)):
        ax.imshow(a, cmap=CMAP, vmin=-m, vmax=m)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


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


_PAINTERS = {"image": _image_row, "signal": _signal_row, "tabular": _tabular_row}
_CELL_SIZE = {"image": (2.2, 2.2), "signal": (3.6, 1.8), "tabular": (3.6, 2.6)}


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
    if kind == "tabular" and feature_names is None:
        feature_names = [f"x{j}" for j in range(x.shape[1])]
    width, height = _CELL_SIZE[kind]
    n = x.shape[0]
    if kind == "image":
        return _image_mosaic(x, t, s, labels, title, width=5.0)
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


def _image_mosaic(
    x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str, width: float
) -> Figure:
    """Images as one RGB mosaic: rows are samples, columns input | teacher | student."""
    panels = _to_rgb(x, t, s)
    n, h, w = panels[0].shape[:3]
    gap = max(1, h // 8)
    mosaic = np.ones((n * (h + gap) - gap, 3 * (w + gap) - gap, 3), dtype=np.float32)  # white gaps
    for i in range(n):
        for j, panel in enumerate(panels):
            mosaic[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = panel[i]
    left = min(0.4, 0.04 + 0.0125 * max(map(len, labels))) if labels else 0.02  # room for the row labels
    top_inches = 0.65 if title else 0.35  # column names (and the title) above the mosaic
    image_height = width * (1 - left - 0.02) * mosaic.shape[0] / mosaic.shape[1]
    height = round(image_height + top_inches + 0.1, 2)  # whole pixels at the default 100 dpi
    fig = Figure(figsize=(width, height))  # a fixed layout: constrained layout would cost a second draw
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left, 0.1 / height, 1 - left - 0.02, image_height / height))
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.xaxis.tick_top()
    ax.set_xticks([j * (w + gap) + (w - 1) / 2 for j in range(3)], list(COLUMNS), fontsize=9)
    ax.set_yticks([i * (h + gap) + (h - 1) / 2 for i in range(n)] if labels else [])
    if labels:
        ax.set_yticklabels(labels, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, y=1 - 0.08 / height, va="top")
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
