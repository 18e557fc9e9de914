"""Values that change over training: loss weights and temperatures per epoch or step."""

from __future__ import annotations

import math


class Schedule:
    """A value as a function of training progress; ``unit`` is ``"epoch"`` or ``"step"``."""

    def __init__(self, unit: str = "epoch") -> None:
        if unit not in ("epoch", "step"):
            raise ValueError(f"schedule unit must be 'epoch' or 'step', got {unit!r}")
        self.unit = unit

    def at(self, epoch: int, step: int) -> float:
        return self.value(epoch if self.unit == "epoch" else step)

    def value(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_length(length: int) -> int:
    if length < 1:
        raise ValueError(f"schedule length must be >= 1, got {length}")
    return length


class Constant(Schedule):
    """Always ``value``."""

    def __init__(self, value: float, unit: str = "epoch") -> None:
        super().__init__(unit)
        self.constant = float(value)

    def value(self, t: int) -> float:
        return self.constant


class LinearWarmup(Schedule):
    """From ``start`` to ``end`` in ``length`` units, then ``end``.

    Unit ``t`` (counted from 0) gets ``start + (end - start) * min((t + 1) / length, 1)``: the first
    unit already takes one step, as DKD's reference warm-up ``min(epoch / 20, 1)`` with epochs
    counted from 1.
    """

    def __init__(self, length: int, start: float = 0.0, end: float = 1.0, unit: str = "epoch") -> None:
        super().__init__(unit)
        self.length, self.start, self.end = _check_length(length), float(start), float(end)

    def value(self, t: int) -> float:
        return self.start + (self.end - self.start) * min((t + 1) / self.length, 1.0)


class Cosine(Schedule):
    """Half a cosine from ``start`` (t = 0) to ``end`` (t >= length)."""

    def __init__(self, length: int, start: float = 1.0, end: float = 0.0, unit: str = "epoch") -> None:
        super().__init__(unit)
        self.length, self.start, self.end = _check_length(length), float(start), float(end)

    def value(self, t: int) -> float:
        progress = min(t / self.length, 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve(value: float | Schedule, epoch: int, step: int) -> float:
    """A plain number as is; a :class:`Schedule` evaluated at this point of training."""
    return value.at(epoch, step) if isinstance(value, Schedule) else float(value)
