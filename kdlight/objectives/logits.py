"""Objectives on logits: cross-entropy, Hinton KD, DKD."""
from __future__ import annotations

import torch.nn.functional as F

from kdlight.functional.distillation import dkd_loss, kd_loss
from kdlight.objectives.base import Objective
from kdlight.step import DistillStep, LossTerm


def check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; KD papers use 1-8 (4 is usual)")
    return float(temperature)


def check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


class CrossEntropy(Objective):
    """Cross-entropy with the labels (term ``ce``); the student-only baseline."""

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = float(weight)
        self.label_smoothing = check_fraction("label_smoothing", label_smoothing)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if step.target is None:
            return []
        value = F.cross_entropy(step.student_logits, step.target, label_smoothing=self.label_smoothing)
        return [LossTerm("ce", value, self.weight)]


class KD(Objective):
    """Hinton KD: ``(1 - alpha) * CE + alpha * T^2 * KL(p_t || p_s)`` (terms ``ce`` and ``kd``)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.alpha = check_fraction("alpha", alpha)
        self.ce = CrossEntropy(weight=1.0 - self.alpha)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        kd = kd_loss(step.student_logits, step.teacher_logits, self.temperature)
        terms = self.ce(step) if self.alpha < 1.0 else []
        return [*terms, LossTerm("kd", kd, self.alpha)]


class DKD(Objective):
    """Decoupled KD (Zhao et al. 2022): ``ce_weight * CE + warmup * (alpha*TCKD + beta*NCKD)``.

    The warm-up factor is ``min(epoch / warmup_epochs, 1)`` with epochs counted from 1, as in the
    reference code (Lightning counts from 0, so epoch ``e`` uses ``(e + 1) / warmup_epochs``).
    ``warmup_epochs=0`` disables it. Terms: ``ce`` and ``dkd``.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        warmup_epochs: int = 20,
    ) -> None:
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = check_temperature(temperature)
        self.warmup_epochs = warmup_epochs
        self.ce = CrossEntropy(weight=ce_weight)

    def warmup(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if step.target is None:
            raise ValueError("DKD needs labels: its target-class split uses the ground truth")
        value = dkd_loss(
            step.student_logits, step.teacher_logits, step.target, self.alpha, self.beta, self.temperature
        )
        return [*self.ce(step), LossTerm("dkd", value, self.warmup(step.epoch))]
