"""Base class of every distillation objective, and the argument check they all use."""

from __future__ import annotations

import math

from torch import nn

from kdlight.core.schedules import Schedule, resolve
from kdlight.core.step import DistillStep, LossTerm

# kind: (lowest, highest, lowest allowed itself, what the value must do, the same for inf, default fix)
RANGES = {
    "weight": (
        0.0,
        math.inf,
        True,
        "be >= 0",
        "be a finite number >= 0",
        "use 0 to turn the term off (a negative weight would maximise its loss)",
    ),
    "fraction": (0.0, 1.0, True, "lie in [0, 1]", "lie in [0, 1]", "use a value from 0 to 1"),
    "temperature": (0.0, math.inf, False, "be > 0", "be a finite number > 0", "KD papers use 1-8 (4 is usual)"),
}


def check_arg(
    owner: str, name: str, value: float | Schedule, kind: str = "weight", fix: str | None = None
) -> float | Schedule:
    """``value`` as a float (a :class:`Schedule` unchanged) if it lies in the range of ``kind``, else a one-line ValueError.

    ``kind`` is ``"weight"`` (finite, >= 0; 0 turns a term off), ``"fraction"`` ([0, 1]) or
    ``"temperature"`` (finite, > 0). The message reads ``"<name> must <range>, got <value> in
    <owner>; <fix>"``. A schedule is checked through the values it has: a ``Constant``'s value and
    the ``start`` / ``end`` of ``LinearWarmup`` / ``Cosine``. A start or end may equal an open lower
    bound (``LinearWarmup`` never takes its start; a temperature schedule that reaches 0 is refused
    at that step by ``temperature_at``) but never pass it.
    """
    low, high, low_ok, must, must_finite, default_fix = RANGES[kind]
    if isinstance(value, Schedule):
        points = [
            (attr, getattr(value, attr), attr == "constant")
            for attr in ("constant", "start", "end")
            if hasattr(value, attr)
        ]
    else:
        points = [(None, value, True)]
    for attr, point, attained in points:
        try:
            number = float(point)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number) and (low < number <= high or number == low and (low_ok or not attained)):
            continue
        shown = point if isinstance(point, (int, float)) else repr(point)
        shown = f"{type(value).__name__} with {attr}={shown}" if attr else shown
        raise ValueError(
            f"{name} must {must_finite if math.isinf(number) else must}, got {shown} in {owner}; {fix or default_fix}"
        )
    return value if isinstance(value, Schedule) else float(value)


class Objective(nn.Module):
    """A configurable loss: reads a :class:`DistillStep`, returns named :class:`LossTerm` s.

    Subclasses list the submodule paths they need in ``student_layers`` / ``teacher_layers``;
    the module captures those outputs with forward hooks. Trainable parts (e.g. hint
    regressors) are created in :meth:`build`, called once with an example step before the
    optimizer is built, and are trained with the student. Constructor arguments are checked with
    :func:`check_arg`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.student_layers: list[str] = []
        self.teacher_layers: list[str] = []
        self.needs_models: bool = False

    def build(self, step: DistillStep) -> None:
        """Create trainable parts from the real feature shapes of an example step."""

    def forward(self, step: DistillStep) -> list[LossTerm]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def term(name: str, value, weight: float | Schedule, step: DistillStep, samples: str = "all") -> LossTerm:
        """A :class:`LossTerm` whose weight may follow a :class:`~kdlight.core.schedules.Schedule`.

        A scheduled weight that goes below 0 at this step is an error (a custom schedule may)."""
        weight_now = resolve(weight, step.epoch, step.global_step)
        if isinstance(weight, Schedule):
            check_arg(
                f"term {name!r} at epoch {step.epoch}, step {step.global_step}",
                "weight",
                weight_now,
                fix="keep the weight schedule >= 0",
            )
        return LossTerm(name, value, weight_now, isinstance(weight, Schedule), samples)
