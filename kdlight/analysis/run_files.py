"""The files of a run directory, read into the fields of a :class:`~kdlight.analysis.runs.Run`.

A CSVLogger run directory holds ``metrics.csv``, ``hparams.yaml``, ``config.yaml`` and
``explain/<key>_epoch<N>.csv|png`` (written by :mod:`kdlight.reporting.artifacts`); a W&B run
directory its ``run-<id>.wandb`` file (read by :mod:`kdlight.analysis.wandb_reader`) and media
under ``files/``. Either may hold ``*.ckpt`` files, or name a ``ModelCheckpoint(dirpath=...)``
that holds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdlight.analysis.tidy import tidy_metrics
from kdlight.analysis.wandb_reader import read_wandb_run
from kdlight.reporting.artifacts import CLI_CONFIG_KEY  # the W&B config key of the resolved CLI config

__all__ = ["csv_run_fields", "wandb_run_fields"]

_CSV_TABLE = re.compile(r"^(?P<key>.+)_epoch(?P<epoch>\d+)\.csv$")
_CSV_IMAGE = re.compile(r"^(?P<key>.+)_epoch(?P<epoch>\d+)\.png$")
_EXPLAIN_KEY = re.compile(r"^(?P<split>[A-Za-z]+)[/_]explain[/_](?P<method>.+?)[/_](?P<what>per_class|heatmaps)$")
_MEDIA_COLUMNS = ["key", "split", "method", "epoch", "kind", "path"]


def csv_run_fields(path: Path) -> dict[str, Any]:
    """The :class:`~kdlight.analysis.runs.Run` fields of a CSVLogger run directory."""
    try:
        raw = pd.read_csv(path / "metrics.csv")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path / 'metrics.csv'} is empty: the run logged no metrics") from None
    if raw.empty:
        raise ValueError(f"{path / 'metrics.csv'} has a header but no rows: the run logged no metrics")
    hparams = _read_yaml(path / "hparams.yaml")
    config = _read_yaml(path / "config.yaml") or hparams
    entries = []
    explain = path / "explain"
    for file in sorted(explain.glob("*")) if explain.is_dir() else []:
        pattern = {".csv": _CSV_TABLE, ".png": _CSV_IMAGE}.get(file.suffix)
        match = pattern.match(file.name) if pattern else None
        if not match:
            continue
        kind = "table" if file.suffix == ".csv" else "image"
        split, method = _parse_key(match["key"])  # artifacts.py wrote the key with "/" -> "_"
        key = f"{split}/explain/{method}/{'per_class' if kind == 'table' else 'heatmaps'}" if method else match["key"]
        entries.append(
            {
                "key": key,
                "split": split,
                "method": method,
                "epoch": int(match["epoch"]),
                "kind": kind,
                "path": str(file),
            }
        )
    return _fields(path, "csv", tidy_metrics(raw), config, hparams, _media_frame(entries), pd.read_csv)


def wandb_run_fields(path: Path, file: Path) -> dict[str, Any]:
    """The :class:`~kdlight.analysis.runs.Run` fields of a W&B run directory (its run file ``file``)."""
    content = read_wandb_run(path, file)
    hparams = {k: v for k, v in content.config.items() if k != CLI_CONFIG_KEY}
    resolved = content.config.get(CLI_CONFIG_KEY) or hparams
    entries = [{**e, **dict(zip(("split", "method"), _parse_key(e["key"])))} for e in content.media]
    media = _media_frame([e for e in entries if Path(e["path"]).is_file()])

    def read_table(table: Path) -> pd.DataFrame:
        data = json.loads(table.read_text())
        return pd.DataFrame(data.get("data", []), columns=data.get("columns"))

    fields = _fields(path, "wandb", tidy_metrics(pd.DataFrame(content.scalars)), resolved, hparams, media, read_table)
    return {**fields, "summary": content.summary, "finished": content.finished}


def _fields(
    path: Path,
    kind: str,
    metrics: pd.DataFrame,
    config: dict[str, Any],
    hparams: dict[str, Any],
    media: pd.DataFrame,
    read_table: Callable[[Path], pd.DataFrame],
) -> dict[str, Any]:
    return {
        "path": path,
        "kind": kind,
        "metrics": metrics,
        "config": config,
        "hparams": hparams,
        "tables": _tables_from(media, read_table),
        "images": [Path(p) for p in media.loc[media["kind"] == "image", "path"]],
        "media": media,
        "checkpoints": _checkpoints(path, config),
    }


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


def _parse_key(key: str) -> tuple[str | None, str | None]:
    """``(split, method)`` of a logged explanation key (``val/explain/<method>/heatmaps``), else Nones."""
    match = _EXPLAIN_KEY.match(key)
    return (match["split"], match["method"]) if match else (None, None)


def _media_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    if not entries:
        return pd.DataFrame(columns=_MEDIA_COLUMNS)
    frame = pd.DataFrame(entries, columns=_MEDIA_COLUMNS)
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame.sort_values(["kind", "key", "epoch"], kind="stable").reset_index(drop=True)


def _tables_from(media: pd.DataFrame, reader: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
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
