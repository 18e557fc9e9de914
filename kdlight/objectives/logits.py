"""Objectives on logits: cross-entropy, Hinton KD, DKD."""

from __future__ import annotations

import torch.nn.functional as F

from kdlight.core.schedules import LinearWarmup, Schedule, resolve
from kdlight.core.step import UNLABELED, DistillStep, LossTerm
from kdlight.functional.distillation import dkd_loss, kd_loss
from kdlight.objectives.base import Objective, check_arg


def temperature_at(owner: Objective, temperature: float | Schedule, step: DistillStep) -> float:
    """The temperature for this step; a schedule that reaches <= 0 is an error."""
    return check_arg(
        type(owner).__name__,
        "temperature",
        resolve(temperature, step.epoch, step.global_step),
        "temperature",
        fix=f"the schedule reached it at epoch {step.epoch}, step {step.global_step}; keep its values > 0",
    )


ALPHA_FIX = "alpha is the share of the KD term and 1 - alpha that of the CE term (0.9 is usual)"
SMOOTHING_FIX = "0 turns label smoothing off, 0.1 is usual"


class CrossEntropy(Objective):
    """Cross-entropy with the labels (term ``ce``, labeled samples only); the student-only baseline."""

    def __init__(self, weight: float | Schedule = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = check_arg("CrossEntropy", "weight", weight)
        self.label_smoothing = check_arg("CrossEntropy", "label_smoothing", label_smoothing, "fraction", SMOOTHING_FIX)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if step.target is None:
            return []
        value = F.cross_entropy(
            step.student_logits, step.target, ignore_index=UNLABELED, label_smoothing=self.label_smoothing
        )
        return [self.term("ce", value, self.weight, step, samples="labeled")]


class KD(Objective):
    """Hinton KD: ``(1 - alpha) * CE + alpha * T^2 * KL(p_t || p_s)`` (terms ``ce`` and ``kd``).

    ``temperature`` may be a :class:`~kdlight.core.schedules.Schedule` (per epoch or step).
    """

    def __init__(self, temperature: float | Schedule = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.temperature = check_arg("KD", "temperature", temperature, "temperature")
        self.alpha = check_arg("KD", "alpha", alpha, "fraction", ALPHA_FIX)
        self.ce = CrossEntropy(weight=1.0 - self.alpha)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        kd = kd_loss(step.student_logits, step.teacher_logits, temperature_at(self, self.temperature, step))
        terms = self.ce(step) if self.alpha < 1.0 else []
        return [*terms, LossTerm("kd", kd, self.alpha)]


class DKD(Objective):
    """Decoupled KD (Zhao et al. 2022): ``ce_weight * CE + warmup * (alpha*TCKD + beta*NCKD)``.

    The warm-up factor is ``min(epoch / warmup_epochs, 1)`` with epochs counted from 1, as in the
    reference code, expressed as ``LinearWarmup(warmup_epochs)`` (Lightning counts from 0, so epoch
    ``e`` uses ``(e + 1) / warmup_epochs``). ``warmup_epochs=0`` disables it; ``warmup`` takes
    any other :class:`~kdlight.core.schedules.Schedule` instead. Terms: ``ce`` and ``dkd``.
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
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs} in DKD; 0 turns the warm-up off")
        self.alpha = check_arg("DKD", "alpha", alpha, fix="alpha weighs the target-class term TCKD (1.0 is usual)")
        self.beta = check_arg("DKD", "beta", beta, fix="beta weighs the non-target-class term NCKD (8.0 is usual)")
        self.temperature = check_arg("DKD", "temperature", temperature, "temperature")
        if warmup is None:
            warmup = LinearWarmup(length=warmup_epochs) if warmup_epochs > 0 else 1.0
        self.warmup_weight = check_arg(
            "DKD", "warmup", warmup, fix="it multiplies the dkd term (LinearWarmup from 0 to 1 is usual)"
        )
        self.ce = CrossEntropy(weight=check_arg("DKD", "ce_weight", ce_weight))

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if step.target is None:
            raise ValueError("DKD needs labels: its target-class split uses the ground truth")
        temperature = temperature_at(self, self.temperature, step)
        labeled = step.target != UNLABELED  # DKD splits by the true class: labeled samples only
        s, t, y = step.student_logits[labeled], step.teacher_logits[labeled], step.target[labeled]
        value = dkd_loss(s, t, y, self.alpha, self.beta, temperature)
        return [*self.ce(step), self.term("dkd", value, self.warmup_weight, step, samples="labeled")]
