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
  axes, which matters because the callback draws one per method during ``fit``), signals and
  tabular rows get one axes per cell (``fig.axes`` holds ``N * 3`` axes, row-major).
  :func:`explanation_image` gives every modality as an RGB array.
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

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from kdlight.core.modality import Modality, Text, figure_to_array
from kdlight.core.modality.base import new_figure

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
    return modality.explanation_figure(x, t, s, labels, title)


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
    """:func:`explanation_figure` as an RGB array ``[H, W, 3]`` (uint8); images skip matplotlib."""
    modality, x, t, s = _prepare(inputs, teacher_maps, student_maps, labels, feature_names, modality)
    return modality.explanation_image(x, t, s, labels, title)


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
