"""Load finished runs into pandas and draw the figures that compare them.

The package by concern (each name below is importable from ``kdlight.analysis`` itself; its
submodule is imported the first time the name is used):

* :mod:`~kdlight.analysis.runs`: the :class:`Run` record, :func:`load_run` (CSVLogger or W&B run
  directory), :func:`load_runs` (one row of best or final metrics per run),
  :func:`agreement_vs_chance`;
* :mod:`~kdlight.analysis.run_files`: a CSVLogger or W&B run directory read into a Run's fields;
* :mod:`~kdlight.analysis.tidy`: :func:`tidy_metrics`, logger rows into epoch and step levels;
* :mod:`~kdlight.analysis.wandb_reader`: :func:`read_wandb_records`, W&B's ``run-<id>.wandb``
  file read without W&B's reader;
* :mod:`~kdlight.analysis.figures`: :func:`plot_curves`, :func:`plot_accuracy_vs_agreement`;
* :mod:`~kdlight.analysis.checkpoints`: :func:`load_module`, :func:`datamodule_from_config`,
  :func:`heatmaps_from_checkpoint`;
* :mod:`~kdlight.analysis.compare`: comparison tables of trained networks against a teacher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it
_HOMES = {
    "Run": "runs",
    "load_run": "runs",
    "load_runs": "runs",
    "agreement_vs_chance": "runs",
    "tidy_metrics": "tidy",
    "metric_columns": "tidy",
    "INDEX_COLUMNS": "tidy",
    "read_wandb_records": "wandb_reader",
    "plot_curves": "figures",
    "plot_accuracy_vs_agreement": "figures",
    "default_curve_metrics": "figures",
    "load_module": "checkpoints",
    "datamodule_from_config": "checkpoints",
    "heatmaps_from_checkpoint": "checkpoints",
}

__all__ = [
    "Run",
    "load_run",
    "load_runs",
    "read_wandb_records",
    "tidy_metrics",
    "load_module",
    "datamodule_from_config",
    "agreement_vs_chance",
    "plot_curves",
    "plot_accuracy_vs_agreement",
    "heatmaps_from_checkpoint",
]

if TYPE_CHECKING:
    from kdlight.analysis.checkpoints import datamodule_from_config, heatmaps_from_checkpoint, load_module
    from kdlight.analysis.figures import plot_accuracy_vs_agreement, plot_curves
    from kdlight.analysis.runs import Run, agreement_vs_chance, load_run, load_runs
    from kdlight.analysis.tidy import tidy_metrics
    from kdlight.analysis.wandb_reader import read_wandb_records


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(
            f"module 'kdlight.analysis' has no attribute {name!r}; it has: {', '.join(sorted(_HOMES))}"
        )
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
