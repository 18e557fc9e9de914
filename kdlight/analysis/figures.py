"""Figures that compare runs: curves over epochs and accuracy against agreement.

They return :class:`matplotlib.figure.Figure` objects built without pyplot (see
:mod:`kdlight.explain.plots`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdlight.analysis.runs import Run, load_run, load_runs
from kdlight.analysis.tidy import metric_columns
from kdlight.explain.plots import agreement_over_epochs_figure

__all__ = ["default_curve_metrics", "plot_curves", "plot_accuracy_vs_agreement"]


def _new_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def default_curve_metrics(run: Run) -> list[str]:
    """Validation accuracy, teacher accuracy, top-1 agreement and the rank correlation of every
    explanation method with its chance level, where logged."""
    names = ["val/acc", "val/teacher_acc", "val/agreement"]
    for method in run.methods:
        names += [f"val/explain/{method}/rank_correlation", f"val/explain/{method}/chance_rank_correlation"]
    return [n for n in names if n in run.epochs.columns]


def plot_curves(run: Run | str | Path, metrics: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Accuracy and agreement over epochs (``metrics`` default: :func:`default_curve_metrics`).

    Each ``chance_`` metric is drawn dashed in the colour of its twin. Explanation metrics computed
    every N epochs are joined across the epochs they exist on.
    """
    run = run if isinstance(run, Run) else load_run(run)
    epochs = run.epochs
    metrics = list(metrics) if metrics is not None else default_curve_metrics(run)
    missing = [m for m in metrics if m not in epochs.columns]
    if missing or not metrics:
        raise ValueError(
            f"metrics {missing or metrics} are not epoch-level metrics of {run.name}; it has: {', '.join(metric_columns(epochs))}"
        )
    frame = epochs[["epoch", *metrics]]
    title = title if title is not None else run.name
    if not frame[metrics].isna().any().any():
        fig = agreement_over_epochs_figure(frame, metrics, title=title)
    else:  # gaps (explanations every N epochs): join the points that exist
        fig = _new_figure((6.0, 3.6))
        ax = fig.add_subplot()
        for name in metrics:
            part = frame[["epoch", name]].dropna()
            ax.plot(part["epoch"], part[name], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("value")
        ax.grid(alpha=0.3)
        ax.set_title(title)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for label, line in lines.items():
        twin = lines.get(label.replace("/chance_", "/"))
        if "/chance_" in label and twin is not None:
            line.set_color(twin.get_color())
            line.set_linestyle("--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.set_size_inches(9.0, 3.6)
    return fig


def plot_accuracy_vs_agreement(
    runs: pd.DataFrame | Iterable[str | Path | Run],
    x: str = "val/agreement",
    y: str = "val/acc",
    label: str = "run",
    chance: float | None = None,
    title: str = "",
) -> Figure:
    """Scatter of ``y`` (accuracy) against ``x`` (an agreement metric) across runs, one labelled
    point per run. ``runs`` is a :func:`load_runs` frame or run directories; ``chance`` draws a
    vertical line at the chance level of ``x``."""
    frame = runs if isinstance(runs, pd.DataFrame) else load_runs(runs)
    missing = [c for c in (x, y, label) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the runs table; it has: {', '.join(map(str, frame.columns))}")
    fig = _new_figure((5.5, 4.0))
    ax = fig.add_subplot()
    ax.scatter(frame[x], frame[y], s=30)
    for _, row in frame.iterrows():
        ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if chance is not None:
        ax.axvline(chance, color="0.4", linestyle="--", linewidth=0.8, label=f"chance ({chance:.2f})")
        ax.legend(fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig
