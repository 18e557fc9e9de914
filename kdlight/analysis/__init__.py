"""Load finished runs into pandas and draw the figures that compare them.

A *run* is the folder one ``kdlight fit`` wrote its logs to:

* a **CSVLogger run directory** (the ``configs/`` default, e.g. ``runs/digits/kd/version_0``;
  ``load_run("runs/digits/kd")`` takes the run's newest completed fit, see :mod:`kdlight.reporting.runs`):
  ``metrics.csv``, ``hparams.yaml``, ``config.yaml`` (LightningCLI's resolved config),
  ``explain/*.csv|png`` (per-class tables and heatmap figures written by :mod:`kdlight.reporting.artifacts`)
  and usually the ``*.ckpt`` files;
* a **W&B run directory** (``<save_dir>/wandb/offline-run-*`` or ``run-*``, offline or online).
  W&B >= 0.19 writes no ``wandb-summary.json`` or ``files/config.yaml`` for *offline* runs and
  no longer ships a Python reader for its ``run-<id>.wandb`` transaction log, so
  :func:`read_wandb_records` reads that file directly: the LevelDB-log framing that W&B has used
  since its first release (a 7-byte ``:W&B`` header, 32 KiB blocks of records with 7-byte
  headers) around ``wandb.proto.wandb_internal_pb2.Record`` messages. History rows give the
  metrics, config records the config, and the media files (``files/media/images``,
  ``files/media/table``) the heatmaps and per-class tables. It is the file ``wandb sync``
  uploads, so it is complete as soon as the run has finished.

:func:`load_run` returns a :class:`Run`; :func:`load_runs` one row of best (or final) metrics per
run. The figures return :class:`matplotlib.figure.Figure` objects built without pyplot (see
:mod:`kdlight.explain.plots`).
"""
from __future__ import annotations

import importlib
import json
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdlight.reporting.artifacts import CLI_CONFIG_KEY  # the W&B config key of the resolved CLI config
from kdlight.explain.plots import agreement_over_epochs_figure, explanation_figure
from kdlight.reporting.runs import latest_version

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

#: columns of :attr:`Run.metrics` that are not metrics
INDEX_COLUMNS = ("level", "epoch", "step")
#: W&B bookkeeping keys dropped from the metrics
_WANDB_INTERNAL = {"_step", "_runtime", "_timestamp", "_wandb"}
_WANDB_STEP = "trainer/global_step"

_CSV_TABLE = re.compile(r"^(?P<key>.+)_epoch(?P<epoch>\d+)\.csv$")
_CSV_IMAGE = re.compile(r"^(?P<key>.+)_epoch(?P<epoch>\d+)\.png$")
_EXPLAIN_KEY = re.compile(r"^(?P<split>[A-Za-z]+)[/_]explain[/_](?P<method>.+?)[/_](?P<what>per_class|heatmaps)$")


# ------------------------------------------------------------------------------------------
# the Run record
# ------------------------------------------------------------------------------------------
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
            raise KeyError(f"{monitor!r} is not an epoch-level metric of {self.name}; it has: {', '.join(metric_columns(epochs))}")
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
            raise FileNotFoundError(f"{self.name} holds no heatmap images (log_images was off, or no explanation epoch ran)")
        found = media[(media["kind"] == "image") & (media["split"] == split)]
        if method is not None:
            found = found[found["method"] == method]
        if epoch is not None:
            found = found[found["epoch"] == epoch]
        if found.empty:
            have = media[media["kind"] == "image"][["split", "method", "epoch"]].drop_duplicates().to_dict("records")
            raise FileNotFoundError(f"no {split} heatmap image for method={method!r} epoch={epoch!r} in {self.name}; it has {have}")
        return Path(found.sort_values("epoch").iloc[-1]["path"])

    def __repr__(self) -> str:
        return (
            f"Run({self.name!r}, kind={self.kind!r}, epochs={len(self.epochs)}, steps={len(self.steps)}, "
            f"tables={len(self.tables)} rows, images={len(self.images)}, checkpoints={len(self.checkpoints)})"
        )


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a metrics frame (everything but ``level``, ``epoch``, ``step``)."""
    return [c for c in frame.columns if c not in INDEX_COLUMNS]


# ------------------------------------------------------------------------------------------
# tidy metrics from logger rows
# ------------------------------------------------------------------------------------------
def _classify(raw: pd.DataFrame, metrics: list[str]) -> dict[str, tuple[str, str]]:
    """``column -> (level, name)``.

    ``X_epoch`` is the epoch-level ``X``; ``X_step`` the step-level ``X`` (Lightning's names for
    ``on_step=True, on_epoch=True``). A plain ``X`` with an ``X_epoch`` twin is step-level (kdlight
    logs step values as ``train/loss`` and epoch means as ``train/loss_epoch``). Any other column is
    step-level when it is logged in the same rows as step-level columns or more than once per
    epoch, else epoch-level.
    """
    columns = set(raw.columns)
    out: dict[str, tuple[str, str]] = {}
    for col in metrics:
        if col.endswith("_epoch") and len(col) > 6:
            out[col] = ("epoch", col[:-6])
        elif col.endswith("_step") and len(col) > 5 and col[:-5] not in columns:
            out[col] = ("step", col[:-5])
    twins = {name for level, name in out.values() if level == "epoch"}
    for col in metrics:
        if col not in out and col in twins:
            out[col] = ("step", col)
    known_step = [c for c, (level, _) in out.items() if level == "step"]
    step_rows = raw[known_step].notna().any(axis=1) if known_step else pd.Series(False, index=raw.index)
    for col in metrics:
        if col in out:
            continue
        present = raw[col].notna()
        per_epoch = raw.loc[present].groupby("epoch").size().max() if present.any() else 0
        is_step = bool((present & step_rows).any()) or per_epoch > 1
        out[col] = ("step" if is_step else "epoch", col)
    return out


def tidy_metrics(raw: pd.DataFrame) -> pd.DataFrame:
    """Logger rows (``epoch``, ``step`` and metric columns, NaN where not logged) -> the tidy frame
    of :attr:`Run.metrics`: one row per epoch for epoch-level metrics, one per step for the rest."""
    if "epoch" not in raw.columns or "step" not in raw.columns:
        raise ValueError(f"metric rows need 'epoch' and 'step' columns, got {list(raw.columns)}")
    raw = raw.copy()
    raw["epoch"] = raw["epoch"].ffill().bfill()
    raw = raw[raw["epoch"].notna() & raw["step"].notna()]
    metrics = [c for c in raw.columns if c not in ("epoch", "step")]
    for col in metrics:
        raw[col] = pd.to_numeric(raw[col], errors="coerce")
    metrics = [c for c in metrics if raw[c].notna().any()]
    kinds = _classify(raw, metrics)
    parts = []
    for level, key in (("epoch", "epoch"), ("step", "step")):
        cols = [c for c in metrics if kinds[c][0] == level]
        if not cols:
            continue
        rows = raw[raw[cols].notna().any(axis=1)]
        other = "step" if key == "epoch" else "epoch"
        grouped = rows.groupby(key, sort=True)
        part = grouped[cols].last()  # last non-null value of each column
        part[other] = grouped[other].max()
        part = part.reset_index().rename(columns={c: kinds[c][1] for c in cols})
        part.insert(0, "level", level)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(INDEX_COLUMNS))
    frame = pd.concat(parts, ignore_index=True, sort=False)
    names = sorted(c for c in frame.columns if c not in INDEX_COLUMNS)
    frame = frame[[*INDEX_COLUMNS, *names]]
    for col in ("epoch", "step"):
        frame[col] = frame[col].astype("int64")
    return frame


# ------------------------------------------------------------------------------------------
# YAML helpers
# ------------------------------------------------------------------------------------------
class _LenientLoader(yaml.SafeLoader):
    """SafeLoader that reads Python-object tags (``hparams.yaml`` of non-CLI runs) as strings."""


def _tagged_as_string(loader: yaml.Loader, suffix: str, node: yaml.Node) -> str:
    return f"<{node.tag}>"


_LenientLoader.add_multi_constructor("tag:yaml.org,2002:python/", _tagged_as_string)
_LenientLoader.add_multi_constructor("!", _tagged_as_string)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.load(path.read_text(), Loader=_LenientLoader)  # noqa: S506 - safe loader subclass
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------
# media helpers
# ------------------------------------------------------------------------------------------
def _parse_key(key: str) -> tuple[str | None, str | None]:
    match = _EXPLAIN_KEY.match(key)
    return (match["split"], match["method"]) if match else (None, None)


def _media_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["key", "split", "method", "epoch", "kind", "path"]
    if not entries:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(entries, columns=columns)
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame.sort_values(["kind", "key", "epoch"], kind="stable").reset_index(drop=True)


def _tables_from(media: pd.DataFrame, reader) -> pd.DataFrame:
    frames = []
    for entry in media[media["kind"] == "table"].itertuples(index=False):
        table = reader(Path(entry.path))
        table.insert(0, "epoch", entry.epoch)
        table.insert(0, "method", entry.method)
        table.insert(0, "split", entry.split)
        table.insert(0, "key", entry.key)
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["key", "split", "method", "epoch"])
    return pd.concat(frames, ignore_index=True)


def _checkpoints(run_dir: Path, config: dict[str, Any]) -> list[Path]:
    found = set(run_dir.rglob("*.ckpt"))
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = (callback.get("init_args") or {}).get("dirpath")
            if dirpath and Path(dirpath).is_dir():
                found.update(Path(dirpath).glob("*.ckpt"))
    unique = {p.resolve(): p for p in sorted(found, key=str, reverse=True)}  # one entry per file
    return sorted(unique.values(), key=lambda p: (not p.name.startswith("best"), str(p)))


# ------------------------------------------------------------------------------------------
# CSVLogger runs
# ------------------------------------------------------------------------------------------
def _load_csv_run(path: Path) -> Run:
    try:
        raw = pd.read_csv(path / "metrics.csv")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path / 'metrics.csv'} is empty: the run logged no metrics") from None
    if raw.empty:
        raise ValueError(f"{path / 'metrics.csv'} has a header but no rows: the run logged no metrics")
    metrics = tidy_metrics(raw)
    hparams = _read_yaml(path / "hparams.yaml")
    config = _read_yaml(path / "config.yaml") or hparams
    entries = []
    explain = path / "explain"
    for file in sorted(explain.glob("*")) if explain.is_dir() else []:
        pattern = _CSV_TABLE if file.suffix == ".csv" else _CSV_IMAGE if file.suffix == ".png" else None
        match = pattern.match(file.name) if pattern else None
        if not match:
            continue
        kind = "table" if file.suffix == ".csv" else "image"
        split, method = _parse_key(match["key"])  # artifacts.py wrote the key with "/" -> "_"
        key = f"{split}/explain/{method}/{'per_class' if kind == 'table' else 'heatmaps'}" if method else match["key"]
        entries.append({"key": key, "split": split, "method": method, "epoch": int(match["epoch"]), "kind": kind, "path": str(file)})
    media = _media_frame(entries)
    return Run(
        path=path, kind="csv", metrics=metrics, config=config, hparams=hparams,
        tables=_tables_from(media, pd.read_csv),
        images=[Path(p) for p in media.loc[media["kind"] == "image", "path"]],
        media=media, checkpoints=_checkpoints(path, config),
    )


# ------------------------------------------------------------------------------------------
# W&B runs
# ------------------------------------------------------------------------------------------
_WANDB_HEADER = b":W&B"
_BLOCK = 32768
_RECORD_HEADER = 7  # crc32c (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a ``run-<id>.wandb`` file, in order.

    A truncated last record (a run still writing, or killed) is ignored. CRCs are not checked.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != _WANDB_HEADER or len(data) < 7:
        raise ValueError(f"{path} is not a W&B run file (no ':W&B' header)")
    version = data[6]
    if version != 0:
        raise ValueError(f"{path} uses W&B log format version {version}; kdlight.analysis reads version 0")
    pos, pending = 7, b""
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        if len(chunk) < length:
            break  # truncated
        pos += _RECORD_HEADER + length
        if kind == _FULL:
            payload = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        elif kind == _LAST:
            payload, pending = pending + chunk, b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def _item_keys(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _set_nested(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            return
    target[keys[-1]] = value


def _del_nested(target: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        target = target.get(key, {})
        if not isinstance(target, dict):
            return
    target.pop(keys[-1], None)


def _wandb_file(path: Path) -> Path | None:
    files = sorted(path.glob("run-*.wandb"))
    return files[-1] if files else None


def _load_wandb_run(path: Path, wandb_file: Path) -> Run:
    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    finished = False
    for record in read_wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        finished = finished or kind == "exit"
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, _item_keys(item), json.loads(item.value_json))
            rows.append(row)
        elif kind in ("config", "run"):
            updates = record.config if kind == "config" else record.run.config
            for item in updates.update:
                _set_nested(config, _item_keys(item), json.loads(item.value_json))
            for item in updates.remove:
                _del_nested(config, _item_keys(item))
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(summary, _item_keys(item), json.loads(item.value_json))
            for item in record.summary.remove:
                _del_nested(summary, _item_keys(item))
    summary_file = path / "files" / "wandb-summary.json"
    if summary_file.is_file():  # online runs: the summary W&B computed itself
        summary.update(json.loads(summary_file.read_text()))
    config.pop("_wandb", None)
    summary = {k: v for k, v in summary.items() if k not in _WANDB_INTERNAL}
    if not rows:
        state = "" if finished else "; the run has not finished writing it (no exit record yet)"
        raise ValueError(f"W&B run {path} logged no metrics ({wandb_file.name} holds no history rows{state})")

    scalars, entries, epoch = [], [], None
    for row in rows:
        epoch = row.get("epoch", epoch)  # media rows carry no epoch in older kdlight: forward-fill
        scalar = {"epoch": epoch, "step": row.get(_WANDB_STEP, row.get("_step"))}
        for key, value in row.items():
            if key in _WANDB_INTERNAL or key in (_WANDB_STEP, "epoch"):
                continue
            if isinstance(value, dict) and "_type" in value:
                media_kind = {"image-file": "image", "table-file": "table"}.get(value["_type"])
                if media_kind and value.get("path"):
                    split, method = _parse_key(key)
                    entries.append({"key": key, "split": split, "method": method, "epoch": epoch,
                                    "kind": media_kind, "path": str(path / "files" / value["path"])})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                scalar[key] = value
        scalars.append(scalar)
    metrics = tidy_metrics(pd.DataFrame(scalars))
    hparams = {k: v for k, v in config.items() if k != CLI_CONFIG_KEY}
    resolved = config.get(CLI_CONFIG_KEY) or hparams
    media = _media_frame([e for e in entries if Path(e["path"]).is_file()])

    def read_table(file: Path) -> pd.DataFrame:
        content = json.loads(file.read_text())
        return pd.DataFrame(content.get("data", []), columns=content.get("columns"))

    return Run(
        path=path, kind="wandb", metrics=metrics, config=resolved, hparams=hparams,
        tables=_tables_from(media, read_table),
        images=[Path(p) for p in media.loc[media["kind"] == "image", "path"]],
        media=media, checkpoints=_checkpoints(path, resolved), summary=summary, finished=finished,
    )


# ------------------------------------------------------------------------------------------
# public loaders
# ------------------------------------------------------------------------------------------
_EXPECTED = (
    "metrics.csv (a CSVLogger run directory, e.g. runs/digits/kd/version_0) or run-<id>.wandb "
    "(a W&B run directory, e.g. <save_dir>/wandb/offline-run-<date>-<id>)"
)


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
        return _load_csv_run(path)
    version = latest_version(path)  # a run_dir: its newest completed fit (kdlight.reporting.runs)
    if version is not None and (version / "metrics.csv").is_file():
        return _load_csv_run(version)
    wandb_file = _wandb_file(path)
    if wandb_file is not None:
        return _load_wandb_run(path, wandb_file)
    below = sorted({p.parent for p in path.rglob("metrics.csv")} | {p.parent for p in path.rglob("run-*.wandb")})
    hint = f"; runs found below it: {', '.join(str(p) for p in below[:5])}" if below else ""
    raise FileNotFoundError(f"{path} holds no metrics: expected {_EXPECTED}{hint}")


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
    front = [c for c in ("run", "path", "kind", "student", "objective", "epochs", "epoch", "best_checkpoint") if c in frame]
    return frame[front + sorted(c for c in frame.columns if c not in front)]


def agreement_vs_chance(run: Run, epoch: int | None = None, monitor: str = "val/acc", mode: str = "max") -> pd.DataFrame:
    """Explanation agreement against its chance level, one row per (method, metric).

    Columns ``method``, ``metric`` (``rank_correlation``, ``cosine``, ``feature_agreement``: the
    metrics the callback also measures for a freshly initialised student), ``value``, ``chance``
    and ``above_chance = value - chance``. ``epoch`` default: the explained epoch nearest to the
    best one by ``monitor`` (the callback may explain only every N epochs).
    """
    epochs = run.epochs
    columns = [c for c in epochs.columns if re.match(r"^val/explain/.+/chance_", c)]
    if not columns:
        raise ValueError(f"{run.name} has no explanation agreement metrics (val/explain/<method>/chance_*): "
                         "was the ExplanationAgreement callback on?")
    explained = epochs[epochs[columns].notna().any(axis=1)]
    if epoch is None:
        best = int(run.best(monitor, mode)["epoch"])
        epoch = int(explained.loc[(explained["epoch"] - best).abs().sort_values(kind="stable").index[0], "epoch"])
    if epoch not in set(explained["epoch"]):
        raise ValueError(f"epoch {epoch} has no explanation metrics in {run.name}; explained epochs: {sorted(explained['epoch'])}")
    row = explained.set_index("epoch").loc[epoch]
    rows = []
    for column in sorted(columns):
        method, chance_name = column[len("val/explain/"):].rsplit("/", 1)
        metric = chance_name[len("chance_"):]
        value = row.get(f"val/explain/{method}/{metric}")
        if value is None or pd.isna(value):
            continue
        rows.append({"epoch": epoch, "method": method, "metric": metric, "value": float(value),
                     "chance": float(row[column]), "above_chance": float(value) - float(row[column])})
    return pd.DataFrame(rows)


def datamodule_from_config(config: dict[str, Any]):
    """The data module a run's resolved config names (``data.class_path`` / ``init_args``)."""
    data = config.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("class_path"), str):
        raise ValueError("the run's config names no data module (data.class_path); build the data module yourself")
    module_name, _, name = data["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ValueError(f"cannot import the run's data module {data['class_path']}") from None
    return cls(**(data.get("init_args") or {}))


# ------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------
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
        raise ValueError(f"metrics {missing or metrics} are not epoch-level metrics of {run.name}; it has: {', '.join(metric_columns(epochs))}")
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


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def _checkpoint_class(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the module that wrote ``checkpoint``: stored by LightningCLI, else
    recognised from the state_dict prefixes of kdlight's modules."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if isinstance(hparams.get("_class_path"), str):
        return hparams["_class_path"]
    keys = list(checkpoint.get("state_dict") or {})
    if any(k.startswith("teacher.") for k in keys) and any(k.startswith("student.") for k in keys):
        return "kdlight.DistillationModule"
    if any(k.startswith("model.") for k in keys):
        return "kdlight.ClassifierModule"
    return None


def load_module(checkpoint: str | Path, cls: type | None = None, **overrides: Any):
    """``cls.load_from_checkpoint(checkpoint)`` (default :class:`kdlight.DistillationModule`) in
    eval mode on the CPU, after checking the checkpoint was written by that class.

    A ``DistillationModule`` checkpoint is loaded with ``teacher_checkpoint=None`` (the teacher's
    weights are in the checkpoint; the original teacher file need not exist any more).
    """
    import torch

    import kdlight
    from kdlight.training.distillation import DistillationModule

    cls = cls or DistillationModule
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not read checkpoint {path}: {first}") from None
    if not isinstance(content, dict) or "state_dict" not in content:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict/hyper_parameters); it may be a bare state_dict")
    found = _checkpoint_class(content)
    wanted = f"{cls.__module__}.{cls.__qualname__}"
    public = {f"kdlight.{n}": f"{getattr(kdlight, n).__module__}.{n}" for n in ("ClassifierModule", "DistillationModule")}
    if found is not None and public.get(found, found) != wanted and found != wanted:
        raise ValueError(f"checkpoint {path} holds a {found} but a {wanted} is needed here")
    hparams = content.get("hyper_parameters") or {}
    if cls is DistillationModule:
        if not {"teacher", "student"} <= set(hparams):
            raise ValueError(
                f"checkpoint {path} does not record its teacher/student classes (it was not written by the kdlight CLI); "
                "build the DistillationModule yourself and load the state_dict"
            )
        overrides.setdefault("teacher_checkpoint", None)
    module = cls.load_from_checkpoint(path, map_location="cpu", **overrides)
    return module.eval()


def heatmaps_from_checkpoint(
    checkpoint: str | Path,
    datamodule,
    indices: Sequence[int],
    method: str = "saliency",
    split: str = "val",
    target: str = "teacher",
    method_args: dict[str, Any] | None = None,
    title: str | None = None,
) -> Figure:
    """Teacher and student explanations of the ``split`` samples ``indices`` from a distillation
    checkpoint: a figure input | teacher | student (:func:`kdlight.explain.plots.explanation_figure`).

    ``target``: the class explained, ``teacher`` (its prediction, as the callback), ``student`` or
    ``label``. ``method_args``: extra :class:`kdlight.explain.AttributionConfig` fields.
    """
    import torch

    from kdlight.explain import AttributionConfig, attribute

    if target not in ("teacher", "student", "label"):
        raise ValueError(f"target must be 'teacher', 'student' or 'label', got {target!r}")
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices is empty: give at least one sample index")
    config = AttributionConfig(method=method, **(method_args or {}))
    module = load_module(checkpoint)
    if hasattr(datamodule, "split_tensors"):
        x_all, y_all = datamodule.split_tensors(split)
    else:
        datamodule.setup("fit" if split in ("train", "val") else "test")
        loader = getattr(datamodule, f"{split}_dataloader")()
        batches = list(loader)
        x_all, y_all = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    bad = [i for i in indices if not 0 <= i < len(x_all)]
    if bad:
        raise ValueError(f"indices {bad} are out of range for the {split} split ({len(x_all)} samples)")
    x, y = x_all[indices].float(), y_all[indices]
    train_inputs = datamodule.train_inputs() if hasattr(datamodule, "train_inputs") else None
    teacher, student = module.teacher.eval(), module.student.eval()
    with torch.no_grad():
        t_logits, s_logits = teacher(x), student(x)
    explained = {"teacher": t_logits.argmax(-1), "student": s_logits.argmax(-1), "label": y}[target]
    t_maps = attribute(teacher, x, explained, config, train_inputs=train_inputs)
    s_maps = attribute(student, x, explained, config, train_inputs=train_inputs)
    labels = [f"#{i} y={int(y[k])} t={int(t_logits[k].argmax())} s={int(s_logits[k].argmax())}" for k, i in enumerate(indices)]
    return explanation_figure(
        x, t_maps, s_maps, labels=labels, feature_names=getattr(datamodule, "feature_names", None),
        title=title if title is not None else f"{method} ({split}) from {Path(checkpoint).name}",
    )
