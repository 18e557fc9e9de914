"""Run directories that never lose data.

One knob, ``run_dir`` (top level of a kdlight config, or ``--run_dir``), names a run. Every
``kdlight fit`` writes a new ``<run_dir>/version_<n>/`` (config, metrics, checkpoints, figures);
a fit resumed from a checkpoint of ``version_<n>`` continues in that directory (all epochs once);
``validate`` / ``test`` / ``predict`` write to ``<checkpoint's directory>/<subcommand>/version_<m>/``.
When a fit completes, ``<run_dir>/best.ckpt``, ``last.ckpt`` and ``latest`` become links to that
version's files, so downstream configs find a teacher by a stable path.

Layout::

    runs/digits/kd/
      best.ckpt -> version_1/best.ckpt     (updated only when a fit completes)
      last.ckpt -> version_1/last.ckpt
      latest    -> version_1
      version_0/  config.yaml  metrics.csv  best.ckpt  last.ckpt  explain/  test/version_0/ ...
      version_1/  ...
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = [
    "AtomicCheckpointIO",
    "completed_version",
    "RunCSVLogger",
    "RunDirectory",
    "RunPlan",
    "latest_version",
    "next_version",
    "plan_run",
]

VERSION = re.compile(r"^version_(\d+)$")
LINKS = ("best.ckpt", "last.ckpt")
TEMP_MARK = ".tmp-"  # <file>.tmp-<pid>: a checkpoint being written
PLAN_VARIABLE = "KDLIGHT_RUN_PLAN"  # rank 0's plan, inherited by the processes its DDP launcher starts


# -- versions ------------------------------------------------------------------------------------
def _versions(parent: Path) -> list[tuple[int, Path]]:
    if not parent.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in parent.iterdir() if p.is_dir() and (m := VERSION.match(p.name))]
    return sorted(found)


def next_version(parent: Path) -> Path:
    """``parent/version_<n>`` with ``n`` one above the highest existing version (0 when none)."""
    found = _versions(parent)
    return parent / f"version_{found[-1][0] + 1 if found else 0}"


def completed_version(run_dir: str | Path) -> Path | None:
    """The version a run's ``latest`` link names: its newest completed fit (None before one completes)."""
    link = Path(run_dir) / "latest"
    return link.resolve() if link.is_symlink() and link.is_dir() else None


def latest_version(run_dir: str | Path) -> Path | None:
    """The run's newest completed fit (:func:`completed_version`), else its highest ``version_<n>``;
    None when the run has none."""
    found = _versions(Path(run_dir))
    return completed_version(run_dir) or (found[-1][1] if found else None)


def _version_dir_of(ckpt: Path) -> Path | None:
    """The ``version_<n>`` directory holding ``ckpt`` (links followed), if it is in one."""
    parent = ckpt.resolve().parent
    return parent if VERSION.match(parent.name) else None


# -- planning a command's directory --------------------------------------------------------------
@dataclass
class RunPlan:
    """Where one command writes: ``target``; ``created`` when the command makes that directory
    (so a command that fails before its first step removes it again); ``run_dir`` for the links."""

    subcommand: str
    run_dir: Path
    target: Path
    created: bool
    resumed_from: Path | None = None


def _resolve_ckpt(ckpt_path: str | None, run_dir: Path) -> str | None:
    """Lightning's ``last`` / ``best`` shortcuts read inside ``run_dir``; other values as given."""
    if ckpt_path == "best":
        path = run_dir / "best.ckpt"
    elif ckpt_path == "last":
        candidates = [v / "last.ckpt" for _, v in _versions(run_dir) if (v / "last.ckpt").is_file()]
        if not candidates:
            raise FileNotFoundError(f"--ckpt_path last: no version of {run_dir} has a last.ckpt; give the file's path")
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    else:
        return ckpt_path
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path}: {path} does not exist; fit the run first or give a path")
    return str(path)


def _epochs_after(metrics: Path, epoch: int) -> list[int]:
    """Epochs after ``epoch`` that ``metrics`` holds validation results for."""
    if not metrics.is_file():
        return []
    later = set()
    with metrics.open(newline="") as file:
        for row in csv.DictReader(file):
            validated = any(k.startswith("val/") and v not in ("", None) for k, v in row.items())
            if validated and row.get("epoch") not in ("", None) and int(float(row["epoch"])) > epoch:
                later.add(int(float(row["epoch"])))
    return sorted(later)


def plan_run(
    subcommand: str, run_dir: str | Path, ckpt_path: str | None, overwrite: bool = False
) -> tuple[RunPlan, str | None]:
    """Choose the directory a command writes to (see the module docstring) and resolve
    ``ckpt_path``'s ``last`` / ``best`` shortcuts. Refuses to resume a checkpoint in place when its
    run already went on to later epochs (that would overwrite them) unless ``overwrite``."""
    run_dir = Path(run_dir)
    inherited = _inherited_plan(subcommand, run_dir)
    if inherited is not None:
        return inherited
    plan, ckpt_path = _plan(subcommand, run_dir, ckpt_path, overwrite)
    os.environ[PLAN_VARIABLE] = json.dumps(
        {
            "subcommand": subcommand,
            "run_dir": str(run_dir),
            "target": str(plan.target),
            "created": plan.created,
            "ckpt_path": ckpt_path,
            "resumed_from": str(plan.resumed_from) if plan.resumed_from else None,
        }
    )
    return plan, ckpt_path


def _inherited_plan(subcommand: str, run_dir: Path) -> tuple[RunPlan, str | None] | None:
    """In a process that Lightning's DDP launcher started for rank > 0, the plan rank 0 made
    (else each rank would pick its own next version)."""
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        return None
    saved = json.loads(os.environ.get(PLAN_VARIABLE, "null"))
    if not saved or saved["subcommand"] != subcommand or saved["run_dir"] != str(run_dir):
        return None
    resumed = Path(saved["resumed_from"]) if saved["resumed_from"] else None
    return RunPlan(subcommand, run_dir, Path(saved["target"]), saved["created"], resumed), saved["ckpt_path"]


def _plan(subcommand: str, run_dir: Path, ckpt_path: str | None, overwrite: bool) -> tuple[RunPlan, str | None]:
    ckpt_path = _resolve_ckpt(ckpt_path, run_dir)
    ckpt = Path(ckpt_path) if ckpt_path and "://" not in ckpt_path else None
    if ckpt is not None and ckpt.is_dir():
        names = ", ".join(sorted(p.name for p in ckpt.glob("*.ckpt"))) or "none"
        raise ValueError(f"--ckpt_path {ckpt} is a directory, not a checkpoint file (.ckpt files in it: {names})")
    source = _version_dir_of(ckpt) if ckpt is not None and ckpt.is_file() else None
    if subcommand == "fit":
        if source is None:
            target = next_version(run_dir)
            return RunPlan(subcommand, run_dir, target, created=not target.exists()), ckpt_path
        epoch = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))
        later = _epochs_after(source / "metrics.csv", epoch)
        if later and not overwrite:
            raise ValueError(
                f"{ckpt} is from epoch {epoch} but {source} went on to epoch {later[-1]}; resuming it there would "
                "overwrite that run's later checkpoints: resume from its last.ckpt, or pass --overwrite=true"
            )
        return RunPlan(subcommand, run_dir, source, created=False, resumed_from=ckpt), ckpt_path
    base = source or (ckpt.resolve().parent if ckpt is not None and ckpt.is_file() else run_dir)
    target = next_version(base / subcommand)
    return RunPlan(subcommand, run_dir, target, created=True), ckpt_path


def resumed_config_name(directory: Path) -> str:
    """``config.resume<n>.yaml``: the config of the n-th resumed fit in ``directory``."""
    n = 1
    while (directory / f"config.resume{n}.yaml").exists():
        n += 1
    return f"config.resume{n}.yaml"


# -- pointing the trainer at the plan -------------------------------------------------------------
CSV_LOGGERS = (
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.csv_logs.CSVLogger",
    "kdlight.reporting.runs.RunCSVLogger",
)


def _logger_init(logger: Any, plan: RunPlan) -> Any:
    """One logger's config pointed into ``plan.target``: CSV loggers become :class:`RunCSVLogger`
    writing there, TensorBoard to ``tensorboard/`` inside it, W&B keeps its files there."""
    class_path = logger.get("class_path", "")
    init_args = logger.get("init_args")
    if init_args is None:
        init_args = logger["init_args"] = type(logger)()
    if class_path in CSV_LOGGERS:
        logger["class_path"] = "kdlight.reporting.runs.RunCSVLogger"
        init_args.update({"save_dir": str(plan.target), "name": "", "version": ""})
    elif class_path.endswith("TensorBoardLogger"):
        init_args.update({"save_dir": str(plan.target), "name": "tensorboard", "version": ""})
    elif class_path.endswith("WandbLogger"):
        init_args["save_dir"] = str(plan.target)
        if not init_args.get("name"):
            init_args["name"] = str(plan.target)
    return logger


def place_trainer(trainer: Any, plan: RunPlan) -> None:
    """Point a parsed ``trainer`` config (a jsonargparse Namespace) at ``plan.target``:
    ``default_root_dir``, every logger, and (in ``fit``) every ``ModelCheckpoint``'s ``dirpath``.
    No logger configured means a :class:`RunCSVLogger`; ``logger: false`` stays off."""
    trainer["default_root_dir"] = str(plan.target)
    logger = trainer.get("logger")
    if logger is None or logger is True:
        from jsonargparse import Namespace

        trainer["logger"] = Namespace(
            class_path="kdlight.reporting.runs.RunCSVLogger",
            init_args=Namespace(save_dir=str(plan.target), name="", version=""),
        )
    elif isinstance(logger, list):
        trainer["logger"] = [_logger_init(one, plan) for one in logger]
    elif logger is not False:
        trainer["logger"] = _logger_init(logger, plan)
    if plan.subcommand == "fit":
        for callback in trainer.get("callbacks") or []:
            if str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
                if callback.get("init_args") is None:
                    callback["init_args"] = type(callback)()
                callback["init_args"]["dirpath"] = str(plan.target)


# -- writing -----------------------------------------------------------------------------------
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one continues it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class RunCSVLogger(CSVLogger):
    """A ``CSVLogger`` that never deletes an existing ``metrics.csv``: a resumed fit appends to it.

    :meth:`set_aside_after` moves the rows a resumed fit is about to redo (steps at or after the
    checkpoint) to ``metrics.before-resume-<step>.csv``, so each epoch is in ``metrics.csv`` once
    and no row is lost.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def set_aside_after(self, step: int) -> Path | None:
        """Move rows with ``step >= step`` to a side file; returns it (None when there were none)."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return None
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = reader.fieldnames or [], list(reader)
        before = [r.get("step") in ("", None) or int(float(r["step"])) < step for r in rows]
        keep = [r for r, b in zip(rows, before) if b]
        later = [r for r, b in zip(rows, before) if not b]
        if not later:
            return None
        aside = path.with_name(f"metrics.before-resume-{step}.csv")
        for target, part in ((aside, later), (path, keep)):
            tmp = target.with_name(target.name + TEMP_MARK + str(os.getpid()))
            with tmp.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                writer.writeheader()
                writer.writerows(part)
            os.replace(tmp, target)
        return aside


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<file>.tmp-<pid>`` beside the checkpoint, then renames it over the file: a killed
    write leaves the previous checkpoint intact (Lightning's own transaction writes to the system
    temp directory and moves the file across, which is not atomic between file systems)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TEMP_MARK + str(os.getpid()))
        with tmp.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)


def _stale_temp_files(directory: Path) -> list[Path]:
    """``*.tmp-<pid>`` files in ``directory`` whose writing process is gone."""
    stale = []
    for path in directory.glob(f"*{TEMP_MARK}*"):
        pid = path.name.rsplit(TEMP_MARK, 1)[-1]
        alive = pid.isdigit() and pid != str(os.getpid()) and Path(f"/proc/{pid}").exists()
        if not alive:
            stale.append(path)
    return stale


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` (relative), replacing an older link atomically; a regular file
    of that name (an old layout's checkpoint) is never replaced."""
    if link.exists() and not link.is_symlink():
        return
    tmp = link.with_name(link.name + TEMP_MARK + str(os.getpid()))
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


class RunDirectory(Callback):
    """Carries out a :class:`RunPlan`: atomic checkpoints and cleanup of stale temp files at start,
    the resumed history set aside at the first step, the run's links when a fit completes, and the
    new directory removed again when a command fails before its first training step."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero:
            directories = {self.plan.target} | {Path(c.dirpath) for c in trainer.checkpoint_callbacks if c.dirpath}
            for directory in directories:
                for path in _stale_temp_files(directory):
                    path.unlink(missing_ok=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.plan.resumed_from is not None and trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, RunCSVLogger):
                    logger.set_aside_after(trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        target = self.plan.target
        if trainer.interrupted or trainer.fast_dev_run or not trainer.is_global_zero or not target.is_dir():
            return  # stopped, a dry run, another rank, or a fit that wrote nothing (no logger, no checkpoints)
        if self.plan.subcommand != "fit":
            return
        for name in LINKS:
            if (target / name).is_file():
                _link(self.plan.run_dir / name, target / name)
        _link(self.plan.run_dir / "latest", target)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        started = trainer.global_step > 0 and self.plan.subcommand == "fit" and not self.plan.resumed_from
        if self.plan.created and not started and trainer.is_global_zero and self.plan.target.is_dir():
            shutil.rmtree(self.plan.target, ignore_errors=True)
            parent = self.plan.target.parent
            if parent != self.plan.run_dir and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()  # the <subcommand>/ folder made for this command
