"""The :class:`Run` record: a finished run's metrics, config, media and checkpoints.

A *run* is the folder one ``kdlight fit`` wrote its logs to:

* a **CSVLogger run directory** (the ``configs/`` default, e.g. ``runs/digits/kd/version_0``;
  ``load_run("runs/digits/kd")`` takes the run's newest completed fit, see
  :mod:`kdlight.reporting.runs`): ``metrics.csv``, ``hparams.yaml``, ``config.yaml``
  (LightningCLI's resolved config), ``explain/*.csv|png`` (per-class tables and heatmap figures
  written by :mod:`kdlight.reporting.artifacts`) and usually the ``*.ckpt`` files;
* a **W&B run directory** (``<save_dir>/wandb/offline-run-*`` or ``run-*``, offline or online),
  read by :mod:`kdlight.analysis.wandb_reader`: history rows give the metrics, config records the
  config, and the media files (``files/media/images``, ``files/media/table``) the heatmaps and
  per-class tables.

:mod:`kdlight.analysis.run_files` reads both kinds of directory into the fields of a :class:`Run`.

:func:`load_run` returns a :class:`Run`; :func:`load_runs` one row of best (or final) metrics per
run; :func:`agreement_vs_chance` a run's explanation agreement against its chance level.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdlight.analysis.run_files import csv_run_fields, wandb_run_fields
from kdlight.analysis.tidy import metric_columns
from kdlight.analysis.wandb_reader import wandb_file
from kdlight.reporting.runs import latest_version

__all__ = ["Run", "load_run", "load_runs", "agreement_vs_chance"]

_EXPECTED = (
    "metrics.csv (a CSVLogger run directory, e.g. runs/digits/kd/version_0) or run-<id>.wandb "
    "(a W&B run directory, e.g. <save_dir>/wandb/offline-run-<date>-<id>)"
)


@dataclass
class Run:
    """A finished run, as pandas objects and paths.

    Attributes:
        path: the run directory.
        kind: ``"csv"`` or ``"wandb"``.
        metrics: one tidy frame, columns ``level``, ``epoch``, ``step`` and one column per metric.
            ``level == "epoch"`` rows (one per epoch) hold the epoch-level metrics (validation,
            explanation agreement, epoch means of training losses); ``level == "step"`` rows (one
            per logged step) the step-level metrics. ``_step`` / ``_epoch`` suffixes are dropped
            (Lightning's ``on_step=True, on_epoch=True`` names, and kdlight's ``train/loss`` +
            ``train/loss_epoch``), so ``train/loss`` is the step value in step rows and the epoch
            mean in epoch rows. :attr:`epochs` / :attr:`steps` are the two parts without their
            empty columns.
        config: the resolved LightningCLI config (``config.yaml`` / the W&B ``cli_config``); the
            module's hyper-parameters when the run has no CLI config.
        hparams: the module's hyper-parameters (``hparams.yaml`` / the W&B run config).
        tables: per-class agreement tables, long form: ``key``, ``split``, ``method``, ``epoch``
            and the table's own columns (``class``, ``name``, ``mean``, ``count``, ``skipped``).
        images: heatmap figures (PNG paths), ordered by key and epoch; :attr:`media` indexes them.
        media: ``key``, ``split``, ``method``, ``epoch``, ``kind`` (``image`` / ``table``), ``path``.
        checkpoints: ``*.ckpt`` files of the run (in its directory, or where its config's
            ``ModelCheckpoint(dirpath=...)`` points when that exists).
        summary: the W&B run summary (empty for CSV runs).
        finished: for W&B runs, whether the run file ends with W&B's exit record (a run still
            writing, or killed, has none); None for CSV runs.
    """

    path: Path
    kind: str
    metrics: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    tables: pd.DataFrame = field(default_factory=pd.DataFrame)
    images: list[Path] = field(default_factory=list)
    media: pd.DataFrame = field(default_factory=pd.DataFrame)
    checkpoints: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    finished: bool | None = None

    @property
    def name(self) -> str:
        """A short label: the run directory relative to the working directory when inside it."""
        try:
            return str(self.path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(self.path)

    def _level(self, level: str) -> pd.DataFrame:
        frame = self.metrics[self.metrics["level"] == level].drop(columns="level")
        return frame.dropna(axis=1, how="all").reset_index(drop=True)

    @property
    def epochs(self) -> pd.DataFrame:
        """Epoch-level metrics: one row per epoch, columns ``epoch``, ``step``, metrics."""
        return self._level("epoch")

    @property
    def steps(self) -> pd.DataFrame:
        """Step-level metrics: one row per logged step, columns ``epoch``, ``step``, metrics."""
        return self._level("step")

    def best(self, monitor: str = "val/acc", mode: str = "max") -> pd.Series:
        """The epoch-level row where ``monitor`` is best (first such epoch, as ModelCheckpoint)."""
        epochs = self.epochs
        if monitor not in epochs.columns:
            raise KeyError(
                f"{monitor!r} is not an epoch-level metric of {self.name}; it has: {', '.join(metric_columns(epochs))}"
            )
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        values = epochs[monitor]
        if values.notna().sum() == 0:
            raise ValueError(f"{monitor!r} has no values in {self.name}")
        return epochs.loc[values.idxmax() if mode == "max" else values.idxmin()]

    @property
    def best_checkpoint(self) -> Path | None:
        """The checkpoint named ``best*.ckpt``, else None."""
        best = [p for p in self.checkpoints if p.name.startswith("best")]
        return best[0] if best else None

    @property
    def methods(self) -> list[str]:
        """Attribution methods with logged agreement metrics (``val/explain/<method>/...``)."""
        found = {m.group(1) for c in self.metrics.columns if (m := re.match(r"^val/explain/(.+)/rank_correlation$", c))}
        return sorted(found)

    def image(self, method: str | None = None, epoch: int | None = None, split: str = "val") -> Path:
        """The heatmap figure of ``method`` (the only/first one if None) at ``epoch`` (last if None)."""
        media = self.media
        if media.empty or not (media["kind"] == "image").any():
            raise FileNotFoundError(
                f"{self.name} holds no heatmap images (log_images was off, or no explanation epoch ran)"
            )
        found = media[(media["kind"] == "image") & (media["split"] == split)]
        if method is not None:
            found = found[found["method"] == method]
        if epoch is not None:
            found = found[found["epoch"] == epoch]
        if found.empty:
            have = media[media["kind"] == "image"][["split", "method", "epoch"]].drop_duplicates().to_dict("records")
            raise FileNotFoundError(
                f"no {split} heatmap image for method={method!r} epoch={epoch!r} in {self.name}; it has {have}"
            )
        return Path(found.sort_values("epoch").iloc[-1]["path"])

    def __repr__(self) -> str:
        return (
            f"Run({self.name!r}, kind={self.kind!r}, epochs={len(self.epochs)}, steps={len(self.steps)}, "
            f"tables={len(self.tables)} rows, images={len(self.images)}, checkpoints={len(self.checkpoints)})"
        )


# ------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------
def load_run(path: str | Path) -> Run:
    """Load a finished run directory (CSVLogger or W&B, see the module notes) into a :class:`Run`.

    A ``run_dir`` (``runs/digits/kd``) loads its newest completed fit (its ``latest`` link, else its
    highest ``version_<n>``); a ``version_<n>`` directory loads that version."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; give the run directory that holds {_EXPECTED}")
    if (path / "metrics.csv").is_file():
        return Run(**csv_run_fields(path))
    version = latest_version(path)  # a run_dir: its newest completed fit (kdlight.reporting.runs)
    if version is not None and (version / "metrics.csv").is_file():
        return Run(**csv_run_fields(version))
    found = wandb_file(path)
    if found is not None:
        return Run(**wandb_run_fields(path, found))
    below = sorted({p.parent for p in path.rglob("metrics.csv")} | {p.parent for p in path.rglob("run-*.wandb")})
    hint = f"; runs found below it: {', '.join(str(p) for p in below[:5])}" if below else ""
    raise FileNotFoundError(f"{path} holds no metrics: expected {_EXPECTED}{hint}")


# ------------------------------------------------------------------------------------------
# across runs, and against chance
# ------------------------------------------------------------------------------------------
def load_runs(
    paths: Iterable[str | Path | Run], monitor: str = "val/acc", mode: str = "max", at: str = "best"
) -> pd.DataFrame:
    """One row per run: its epoch-level metrics at the best epoch by ``monitor`` (``at="best"``)
    or at the last epoch (``at="final"``), with ``run``, ``path``, ``kind``, ``epochs`` (number
    of epochs logged) and ``epoch`` (the one reported), plus ``student`` / ``objective`` class
    names when the config has them."""
    if at not in ("best", "final"):
        raise ValueError(f"at must be 'best' or 'final', got {at!r}")
    runs = [p if isinstance(p, Run) else load_run(p) for p in paths]
    if not runs:
        raise ValueError("load_runs needs at least one run directory")
    rows = []
    for run in runs:
        epochs = run.epochs
        chosen = run.best(monitor, mode) if at == "best" else epochs.iloc[-1]
        row = {"run": run.name, "path": str(run.path), "kind": run.kind, "epochs": len(epochs)}
        model = (run.config.get("model") or {}).get("init_args", run.config)
        for part in ("student", "objective"):
            spec = model.get(part) if isinstance(model, dict) else None
            if isinstance(spec, dict) and "class_path" in spec:
                row[part] = spec["class_path"].rsplit(".", 1)[-1]
        row.update(chosen.drop(labels=["step"], errors="ignore").to_dict())
        row["epoch"] = int(chosen["epoch"])
        row["best_checkpoint"] = str(run.best_checkpoint) if run.best_checkpoint else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    front = [
        c for c in ("run", "path", "kind", "student", "objective", "epochs", "epoch", "best_checkpoint") if c in frame
    ]
    return frame[front + sorted(c for c in frame.columns if c not in front)]


def agreement_vs_chance(
    run: Run, epoch: int | None = None, monitor: str = "val/acc", mode: str = "max"
) -> pd.DataFrame:
    """Explanation agreement against its chance level, one row per (method, metric).

    Columns ``method``, ``metric`` (``rank_correlation``, ``cosine``, ``feature_agreement``: the
    metrics the callback also measures for a freshly initialised student), ``value``, ``chance``
    and ``above_chance = value - chance``. ``epoch`` default: the explained epoch nearest to the
    best one by ``monitor`` (the callback may explain only every N epochs).
    """
    epochs = run.epochs
    columns = [c for c in epochs.columns if re.match(r"^val/explain/.+/chance_", c)]
    if not columns:
        raise ValueError(
            f"{run.name} has no explanation agreement metrics (val/explain/<method>/chance_*): "
            "was the ExplanationAgreement callback on?"
        )
    explained = epochs[epochs[columns].notna().any(axis=1)]
    if epoch is None:
        best = int(run.best(monitor, mode)["epoch"])
        epoch = int(explained.loc[(explained["epoch"] - best).abs().sort_values(kind="stable").index[0], "epoch"])
    if epoch not in set(explained["epoch"]):
        raise ValueError(
            f"epoch {epoch} has no explanation metrics in {run.name}; explained epochs: {sorted(explained['epoch'])}"
        )
    row = explained.set_index("epoch").loc[epoch]
    rows = []
    for column in sorted(columns):
        method, chance_name = column[len("val/explain/") :].rsplit("/", 1)
        metric = chance_name[len("chance_") :]
        value = row.get(f"val/explain/{method}/{metric}")
        if value is None or pd.isna(value):
            continue
        rows.append(
            {
                "epoch": epoch,
                "method": method,
                "metric": metric,
                "value": float(value),
                "chance": float(row[column]),
                "above_chance": float(value) - float(row[column]),
            }
        )
    return pd.DataFrame(rows)
