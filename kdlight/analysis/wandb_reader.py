"""Read a W&B run directory without W&B's own reader.

W&B >= 0.19 writes no ``wandb-summary.json`` or ``files/config.yaml`` for *offline* runs and no
longer ships a Python reader for its ``run-<id>.wandb`` transaction log, so
:func:`read_wandb_records` reads that file directly: the LevelDB-log framing that W&B has used
since its first release (a 7-byte ``:W&B`` header, 32 KiB blocks of records with 7-byte headers)
around ``wandb.proto.wandb_internal_pb2.Record`` messages. It is the file ``wandb sync`` uploads,
so it is complete as soon as the run has finished. :func:`read_wandb_run` turns its records into
plain Python: scalar history rows, media entries, the config and the summary.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WandbRun", "read_wandb_records", "read_wandb_run", "wandb_file"]

#: W&B bookkeeping keys dropped from the metrics and the summary
WANDB_INTERNAL = frozenset({"_step", "_runtime", "_timestamp", "_wandb"})
#: the step Lightning's WandbLogger logs with every row
WANDB_STEP = "trainer/global_step"
#: W&B media types kdlight logs, and what they hold
MEDIA_KINDS = {"image-file": "image", "table-file": "table"}

_HEADER = b":W&B"
_BLOCK = 32768
_RECORD_HEADER = 7  # crc32c (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a ``run-<id>.wandb`` file, in order.

    A truncated last record (a run still writing, or killed) is ignored. CRCs are not checked.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != _HEADER or len(data) < 7:
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


def wandb_file(run_dir: Path) -> Path | None:
    """The ``run-<id>.wandb`` file of a W&B run directory (the last by name), else None."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    return files[-1] if files else None


@dataclass
class WandbRun:
    """What a W&B run file holds, as plain Python.

    Attributes:
        scalars: one dict per history row: ``epoch`` (forward-filled), ``step`` (the trainer's
            global step) and the row's numeric values.
        media: one dict per logged image or table: ``key``, ``epoch``, ``kind`` (``image`` /
            ``table``) and ``path`` (under the run's ``files/``; the file may be missing).
        config: the run config (W&B's ``_wandb`` entry dropped).
        summary: the run summary (W&B's bookkeeping keys dropped).
        finished: whether the file ends with W&B's exit record.
    """

    scalars: list[dict[str, Any]] = field(default_factory=list)
    media: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def read_wandb_run(run_dir: str | Path, path: str | Path | None = None) -> WandbRun:
    """Read the W&B run in ``run_dir`` (its ``run-<id>.wandb`` file, or ``path``)."""
    run_dir = Path(run_dir)
    path = Path(path) if path is not None else wandb_file(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} holds no run-<id>.wandb file")
    rows: list[dict[str, Any]] = []
    out = WandbRun()
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        out.finished = out.finished or kind == "exit"
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, _item_keys(item), json.loads(item.value_json))
            rows.append(row)
        elif kind in ("config", "run"):
            _apply(out.config, record.config if kind == "config" else record.run.config)
        elif kind == "summary":
            _apply(out.summary, record.summary)
    summary_file = run_dir / "files" / "wandb-summary.json"
    if summary_file.is_file():  # online runs: the summary W&B computed itself
        out.summary.update(json.loads(summary_file.read_text()))
    out.config.pop("_wandb", None)
    out.summary = {k: v for k, v in out.summary.items() if k not in WANDB_INTERNAL}
    if not rows:
        state = "" if out.finished else "; the run has not finished writing it (no exit record yet)"
        raise ValueError(f"W&B run {run_dir} logged no metrics ({path.name} holds no history rows{state})")
    epoch = None
    for row in rows:
        epoch = row.get("epoch", epoch)  # media rows carry no epoch in older kdlight: forward-fill
        scalar = {"epoch": epoch, "step": row.get(WANDB_STEP, row.get("_step"))}
        for key, value in row.items():
            if key in WANDB_INTERNAL or key in (WANDB_STEP, "epoch"):
                continue
            if isinstance(value, dict) and "_type" in value:
                media_kind = MEDIA_KINDS.get(value["_type"])
                if media_kind and value.get("path"):
                    out.media.append(
                        {"key": key, "epoch": epoch, "kind": media_kind, "path": str(run_dir / "files" / value["path"])}
                    )
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                scalar[key] = value
        out.scalars.append(scalar)
    return out


def _apply(target: dict[str, Any], updates: Any) -> None:
    """Apply a W&B config/summary record (``update`` and ``remove`` items) to ``target``."""
    for item in updates.update:
        _set_nested(target, _item_keys(item), json.loads(item.value_json))
    for item in updates.remove:
        _del_nested(target, _item_keys(item))


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
