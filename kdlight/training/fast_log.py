"""Cheaper ``self.log``: skip Lightning's per-call device move when nothing has to move.

Every ``LightningModule.log`` call ends in ``_ResultMetric.to(value.device)``, which rebuilds the
stored metric's ``__dict__`` with ``apply_to_collection`` (deep-copying its metadata dataclass) even
when every tensor in it is already on that device: about 75 % of the ~0.3 ms a call costs on CPU
(BENCHMARKS.md, section 1). :func:`skip_redundant_result_moves` wraps that method so that it
returns at once when everything Lightning would move (tensors, and for a logged torchmetrics
``Metric`` its states, defaults, cached results, parameters, buffers and child metrics) is already
on the target device, and calls Lightning's own method otherwise. What is logged does not change;
only the metadata object is no longer replaced by an equal copy.

The wrapper is installed once per process, when the first kdlight module is built, and so also
serves other LightningModules of that process. ``KDLIGHT_FAST_LOG=0`` in the environment (read at
every call) sends every call to Lightning's own method.
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
#: the environment variable that turns the fast path off ("0")
SWITCH = "KDLIGHT_FAST_LOG"


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
    """Whether everything that Lightning's ``apply_to_collection`` would move in ``value`` is
    already on ``device``: tensors, torchmetrics metrics (:func:`metric_on_device`), and what is
    inside mappings, sequences and the init fields of dataclasses; anything else holds none."""
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
        return metric_on_device(value, device)
    return all_on_device([getattr(value, f.name) for f in dataclasses.fields(value) if f.init], device)


def metric_on_device(metric: Metric, device: torch.device) -> bool:
    """Whether ``metric.to(device)`` would move nothing: torchmetrics' ``_apply`` moves the
    parameters and buffers of every submodule and, of every metric among them, its states, their
    defaults, ``_computed`` and ``_forward_cache``, and sets its device."""
    for module in metric.modules():
        tensors = [*module._parameters.values(), *module._buffers.values()]
        if not all(t is None or t.device == device for t in tensors):
            return False
        if isinstance(module, Metric) and not (
            module.device == device
            and all_on_device([getattr(module, name) for name in module._defaults], device)
            and all_on_device(module._defaults.values(), device)
            and on_device(module._computed, device)
            and on_device(module._forward_cache, device)
        ):
            return False
    return True


def all_on_device(values: Iterable[Any], device: torch.device) -> bool:
    """:func:`on_device` of every value."""
    for v in values:
        if not on_device(v, device):
            return False
    return True


def skip_redundant_result_moves() -> bool:
    """Install the fast path on Lightning's ``_ResultMetric.to`` (idempotent); False when this
    Lightning has no such method, or ``KDLIGHT_FAST_LOG=0`` when no kdlight module installed it yet."""
    if os.environ.get(SWITCH) == "0" or _ResultMetric is None or not callable(getattr(_ResultMetric, "to", None)):
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
            and os.environ.get(SWITCH) != "0"
            and all_on_device(self.__dict__.values(), args[0])
        ):
            return self
        return lightning_to(self, *args, **kwargs)

    setattr(to, _MARK, True)
    _ResultMetric.to = to
    return True
