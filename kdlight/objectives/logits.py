"""Objectives on logits: cross-entropy, Hinton KD, DKD."""
from __future__ import annotations

import torch.nn.functional as F

from kdlight.functional.distillation import dkd_loss, kd_loss
from kdlight.objectives.base import Objective
from kdlight.schedules import LinearWarmup, Schedule, resolve
from kdlight.step import UNLABELED, DistillStep, LossTerm


def check_temperature(temperature: float | Schedule) -> float | Schedule:
    if isinstance(temperature, Schedule):
        return temperature
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; KD papers use 1-8 (4 is usual)")
    return float(temperature)


def temperature_at(temperature: float | Schedule, step: DistillStep) -> float:
    """The temperature for this step; a schedule that reaches <= 0 is an error."""
    return check_temperature(resolve(temperature, step.epoch, step.global_step))


def check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


class CrossEntropy(Objective):
    """Cross-entropy with the labels (term ``ce``, labeled samples only); the student-only baseline."""

    def __init__(self, weight: float | Schedule = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.label_smoothing = check_fraction("label_smoothing", label_smoothing)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if step.target is None:
            return []
        value = F.cross_entropy(
            step.student_logits, step.target, ignore_index=UNLABELED, label_smoothing=self.label_smoothing
        )
        return [self.term("ce", value, self.weight, step, samples="labeled")]


class KD(Objective):
    """Hinton KD: ``(1 - alpha) * CE + alpha * T^2 * KL(p_t || p_s)`` (terms ``ce`` and ``kd``).

    ``temperature`` may be a :class:`~kdlight.schedules.Schedule` (per epoch or step).
    """

    def __init__(self, temperature: float | Schedule = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha = check_fraction("alpha", alpha)
        self.ce = CrossEntropy(weight=1.0 - self.alpha)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        kd = kd_loss(step.student_logits, step.teacher_logits, temperature_at(self.temperature, step))
        terms = self.ce(step) if self.alpha < 1.0 else []
        return [*terms, LossTerm("kd", kd, self.alpha)]


class DKD(Objective):
    """Decoupled KD (Zhao et al. 2022): ``ce_weight * CE + warmup * (alpha*TCKD + beta*NCKD)``.

    The warm-up factor is ``min(epoch / warmup_epochs, 1)`` with epochs counted from 1, as in the
    reference code, expressed as ``LinearWarmup(warmup_epochs)`` (Lightning counts from 0, so epoch
    ``e`` uses ``(e + 1) / warmup_epochs``). ``warmup_epochs=0`` disables it; ``warmup`` takes
    any other :class:`~kdlight.schedules.Schedule` instead. Terms: ``ce`` and ``dkd``.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float | Schedule = 4.0,
        ce_weight: float | Schedule = 1.0,
        warmup_epochs: int = 20,
        warmup: Schedule | None = None,
    ) -> None:
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = check_temperature(temperature)
        if warmup is None:
            warmup = LinearWarmup(length=warmup_epochs) if warmup_epochs > 0 else 1.0
        self.warmup_weight = warmup
        self.ce = CrossEntropy(weight=ce_weight)

    def warmup(self, epoch: int, step: int = 0) -> float:
        return resolve(self.warmup_weight, epoch, step)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if step.target is None:
            raise ValueError("DKD needs labels: its target-class split uses the ground truth")
        temperature = temperature_at(self.temperature, step)
        labeled = step.target != UNLABELED  # DKD splits by the true class: labeled samples only
        s, t, y = step.student_logits[labeled], step.teacher_logits[labeled], step.target[labeled]
        value = dkd_loss(s, t, y, self.alpha, self.beta, temperature)
        return [*self.ce(step), self.term("dkd", value, self.warmup_weight, step, samples="labeled")]
