"""Distillation from several teachers at once (a :class:`kdlight.models.ensemble.TeacherEnsemble`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.functional.distillation import kd_loss
from kdlight.objectives.base import Objective, check_arg
from kdlight.objectives.logits import ALPHA_FIX, CrossEntropy, temperature_at

MODES = ("average", "each")


def averaged_kd_loss(student_logits: Tensor, teacher_logits: list[Tensor], temperature: float) -> Tensor:
    """``T^2 * KL(mean_i softmax(z_i/T) || softmax(z_s/T))``, summed over classes, batch mean.

    The averaged soft targets of Hinton et al. (2015) for an ensemble: the teachers' *softened
    distributions* are averaged (not their logits), in log space (logsumexp) so that no probability
    is rounded to zero before its log is taken. With one teacher it is :func:`kd_loss`.
    """
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_t = torch.stack([F.log_softmax(t.to(dtype) / temperature, dim=1) for t in teacher_logits])
    log_p_avg = torch.logsumexp(log_p_t, dim=0) - math.log(len(teacher_logits))
    return F.kl_div(log_p_s, log_p_avg, reduction="batchmean", log_target=True) * temperature**2


class MultiTeacherKD(Objective):
    """KD from ``num_teachers`` teachers: ``(1 - alpha) * CE`` plus ``alpha`` times the KD part.

    The teacher must be a :class:`~kdlight.models.ensemble.TeacherEnsemble`; each member's logits
    are read from the feature taps ``members.0`` ... ``members.<n-1>`` (``teacher_layers``).

    ``mode="average"``: one term ``kd`` (weight ``alpha``), KL to the *average of the teachers'
    softened distributions* ``mean_i softmax(z_i / T)`` (Hinton et al.'s averaged soft targets; not
    KD on the ensemble's mean logits, which is what ``KD`` with the ensemble as teacher gives).
    ``mode="each"``: one term per teacher, ``kd_0``, ``kd_1``, ... each the KD loss to that teacher
    with weight ``alpha / num_teachers``. Every KL is scaled by ``T^2`` and averaged over the batch.
    ``temperature`` may be a :class:`~kdlight.core.schedules.Schedule`. Term ``ce`` (weight ``1 - alpha``)
    needs labels and is left out when ``alpha == 1``.
    """

    def __init__(
        self, num_teachers: int, temperature: float | Schedule = 4.0, alpha: float = 0.9, mode: str = "average"
    ) -> None:
        super().__init__()
        if isinstance(num_teachers, bool) or not isinstance(num_teachers, int) or num_teachers < 1:
            raise ValueError(f"num_teachers must be an integer >= 1, got {num_teachers!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.num_teachers, self.mode = num_teachers, mode
        self.temperature = check_arg("MultiTeacherKD", "temperature", temperature, "temperature")
        self.alpha = check_arg("MultiTeacherKD", "alpha", alpha, "fraction", ALPHA_FIX)
        self.ce = CrossEntropy(weight=1.0 - self.alpha)
        self.teacher_layers = [f"members.{i}" for i in range(num_teachers)]

    def build(self, step: DistillStep) -> None:
        """Check the ensemble against ``num_teachers`` and the member logits against the student's."""
        members = getattr(step.teacher, "members", None)
        if step.teacher is not None and members is not None and len(members) != self.num_teachers:
            raise ValueError(
                f"MultiTeacherKD(num_teachers={self.num_teachers}) but the teacher ensemble has {len(members)} members"
            )
        for name, logits in zip(self.teacher_layers, self.member_logits(step)):
            if tuple(logits.shape) != tuple(step.student_logits.shape):
                raise ValueError(
                    f"teacher {name} outputs shape {tuple(logits.shape)} but the student's logits have shape "
                    f"{tuple(step.student_logits.shape)}; MultiTeacherKD reads each member's logits"
                )

    def member_logits(self, step: DistillStep) -> list[Tensor]:
        missing = [name for name in self.teacher_layers if name not in step.teacher_features]
        if missing:
            raise ValueError(
                f"MultiTeacherKD found no teacher features {missing}: the teacher must be a "
                "kdlight.models.ensemble.TeacherEnsemble with num_teachers members"
            )
        return [step.teacher_features[name] for name in self.teacher_layers]

    def forward(self, step: DistillStep) -> list[LossTerm]:
        temperature = temperature_at(self, self.temperature, step)
        logits = self.member_logits(step)
        terms = self.ce(step) if self.alpha < 1.0 else []
        if self.mode == "average":
            return [
                *terms,
                self.term("kd", averaged_kd_loss(step.student_logits, logits, temperature), self.alpha, step),
            ]
        weight = self.alpha / self.num_teachers
        return [
            *terms,
            *(
                self.term(f"kd_{i}", kd_loss(step.student_logits, t, temperature), weight, step)
                for i, t in enumerate(logits)
            ),
        ]
