"""Base class of every distillation objective."""
from __future__ import annotations

from torch import nn

from kdlight.schedules import Schedule, resolve
from kdlight.step import DistillStep, LossTerm


class Objective(nn.Module):
    """A configurable loss: reads a :class:`DistillStep`, returns named :class:`LossTerm` s.

    Subclasses list the submodule paths they need in ``student_layers`` / ``teacher_layers``;
    the module captures those outputs with forward hooks. Trainable parts (e.g. hint
    regressors) are created in :meth:`build`, called once with an example step before the
    optimizer is built, and are trained with the student.
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
        """A :class:`LossTerm` whose weight may follow a :class:`~kdlight.schedules.Schedule`."""
        weight_now = resolve(weight, step.epoch, step.global_step)
        return LossTerm(name, value, weight_now, isinstance(weight, Schedule), samples)
