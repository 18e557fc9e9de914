"""Cheaper ``self.log``: skip Lightning's per-call device move when nothing has to move.

Every ``LightningModule.log`` call ends in ``_ResultMetric.to(value.device)``, which rebuilds the
stored metric's ``__dict__`` with ``apply_to_collection`` (deep-copying its metadata dataclass) even
when every tensor in it is already on that device: about 75 % of the ~0.3 ms a call costs on CPU
(BENCHMARKS.md, section 1). :func:`skip_redundant_result_moves` wraps that method once per process
so that it returns at once when all of the metric's tensors (and torchmetrics states) are already
on the target device, and calls Lightning's own method otherwise. What is logged does not change;
only the metadata object is no longer replaced by an equal copy. ``KDLIGHT_FAST_LOG=0`` in the
environment leaves Lightning's method as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric

try:  # Lightning's private class; if a later release renames it, kdlight simply leaves it alone
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
except ImportError:  # pragma: no cover - other Lightning versions
    _ResultMetric = None

_MARK = "__kdlight_skips_redundant_moves__"


@functools.cache
def _kind(cls: type) -> str:
    """How Lightning's ``apply_to_collection`` treats a value of this type (decided once per type)."""
    if issubclass(cls, torch.Tensor):
        return "tensor"
    if issubclass(cls, torch.nn.Module):  # Metric is an ABC: only modules are asked about it
        return "metric" if issubclass(cls, Metric) else "leaf"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    # a mapping or sequence has __getitem__; asking an ABC about another type can take 0.2 s (once
    # per type) when many classes derive from it
    if not hasattr(cls, "__getitem__") or issubclass(cls, (str, bytes)):
        return "leaf"
    if issubclass(cls, Mapping):
        return "mapping"
    if issubclass(cls, Sequence):
        return "sequence"
    return "leaf"


def on_device(value: Any, device: torch.device) -> bool:
    """Whether every tensor that Lightning's ``apply_to_collection`` would move in ``value`` is
    already on ``device``: tensors, torchmetrics metrics (and their states), and the tensors inside
    mappings, sequences and dataclasses; anything else holds none."""
    kind = _kind(type(value))
    if kind == "leaf":
        return True
    if kind == "tensor":
        return value.device == device
    if kind == "mapping":
        return all_on_device(value.values(), device)
    if kind == "sequence":
        return all_on_device(value, device)
    if kind == "metric":
        return value.device == device and all_on_device([getattr(value, n) for n in value._defaults], device)
    return all_on_device([getattr(value, f) for f in value.__dataclass_fields__], device)


def all_on_device(values: Iterable[Any], device: torch.device) -> bool:
    """:func:`on_device` of every value."""
    for v in values:
        if not on_device(v, device):
            return False
    return True


def skip_redundant_result_moves() -> bool:
    """Install the fast path on Lightning's ``_ResultMetric.to`` (idempotent); False when this
    Lightning has no such method or ``KDLIGHT_FAST_LOG=0``."""
    if (
        os.environ.get("KDLIGHT_FAST_LOG") == "0"
        or _ResultMetric is None
        or not callable(getattr(_ResultMetric, "to", None))
    ):
        return False
    lightning_to = _ResultMetric.to
    if getattr(lightning_to, _MARK, False):
        return True

    @functools.wraps(lightning_to)
    def to(self, *args: Any, **kwargs: Any):
        if (
            len(args) == 1
            and not kwargs
            and isinstance(args[0], torch.device)
            and all_on_device(self.__dict__.values(), args[0])
        ):
            return self
        return lightning_to(self, *args, **kwargs)

    setattr(to, _MARK, True)
    _ResultMetric.to = to
    return True
