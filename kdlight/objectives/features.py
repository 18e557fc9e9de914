"""Objectives on intermediate features: FitNets hints, attention transfer, RKD, PKT."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.functional.distillation import attention_transfer_loss, pkt_loss, rkd_loss
from kdlight.objectives.base import Objective, check_arg


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], kernel_size: int) -> nn.Module:
    """A learnable map from the student's feature shape to the teacher's (FitNets ``r``).

    Vectors get a linear layer; 1-D / 2-D maps a conv (``kernel_size``, same padding) whose
    output is resized to the teacher's spatial size when the two differ.
    """
    if len(student_shape) != len(teacher_shape):
        raise ValueError(
            f"hint features must have the same rank, got student {tuple(student_shape)} and teacher {tuple(teacher_shape)}"
        )
    c_s, c_t = student_shape[1], teacher_shape[1]
    if len(student_shape) == 2:
        return nn.Linear(c_s, c_t)
    if len(student_shape) not in (3, 4):
        raise ValueError(f"hint features must be 2-D, 3-D or 4-D tensors, got shape {tuple(student_shape)}")
    conv = nn.Conv1d if len(student_shape) == 3 else nn.Conv2d
    norm = nn.BatchNorm1d if len(student_shape) == 3 else nn.BatchNorm2d
    layers: list[nn.Module] = [conv(c_s, c_t, kernel_size, padding=kernel_size // 2), norm(c_t)]
    if tuple(student_shape[2:]) != tuple(teacher_shape[2:]):
        pool = nn.AdaptiveAvgPool1d if len(student_shape) == 3 else nn.AdaptiveAvgPool2d
        layers.append(pool(tuple(teacher_shape[2:])))
    return nn.Sequential(*layers)


class Hint(Objective):
    """FitNets hint: ``MSE(r(f_s), f_t)`` with a learnable regressor ``r`` (term ``hint``).

    The regressor is shaped automatically from the two feature shapes at setup, trained with the
    student and saved in its checkpoints.
    """

    def __init__(
        self, student_layer: str, teacher_layer: str, weight: float | Schedule = 100.0, kernel_size: int = 1
    ) -> None:
        super().__init__()
        self.student_layers, self.teacher_layers = [student_layer], [teacher_layer]
        self.weight, self.kernel_size = check_arg("Hint", "weight", weight), kernel_size
        self.regressor: nn.Module | None = None
        self.shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def build(self, step: DistillStep) -> None:
        f_s, f_t = self._pair(step)
        self.build_from_shapes(tuple(f_s.shape), tuple(f_t.shape))

    def build_from_shapes(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        if self.regressor is None:
            self.shapes = (tuple(student_shape), tuple(teacher_shape))
            self.regressor = make_regressor(student_shape, teacher_shape, self.kernel_size)

    def _pair(self, step: DistillStep) -> tuple[Tensor, Tensor]:
        return step.student_features[self.student_layers[0]], step.teacher_features[self.teacher_layers[0]]

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if self.regressor is None:
            raise RuntimeError("Hint.build() was not called; DistillationModule.setup() builds it")
        f_s, f_t = self._pair(step)
        return [self.term("hint", F.mse_loss(self.regressor(f_s), f_t.detach()), self.weight, step)]


class AttentionTransfer(Objective):
    """Attention transfer over paired layers, summed over pairs (term ``at``; reference beta=1000)."""

    def __init__(self, student_layers: list[str], teacher_layers: list[str], weight: float | Schedule = 1000.0) -> None:
        super().__init__()
        if len(student_layers) != len(teacher_layers) or not student_layers:
            raise ValueError(
                f"student_layers and teacher_layers must hold the same non-zero number of layers, got "
                f"{len(student_layers)} and {len(teacher_layers)} in AttentionTransfer; pair each student layer with one teacher layer"
            )
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self.weight = check_arg("AttentionTransfer", "weight", weight)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        losses = [
            attention_transfer_loss(step.student_features[s], step.teacher_features[t])
            for s, t in zip(self.student_layers, self.teacher_layers)
        ]
        return [self.term("at", sum(losses[1:], losses[0]), self.weight, step)]


class _EmbeddingObjective(Objective):
    """Shared plumbing of the relational objectives: one embedding layer per model (or logits)."""

    def __init__(self, student_layer: str | None, teacher_layer: str | None, weight: float | Schedule) -> None:
        super().__init__()
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_layers = [student_layer] if student_layer else []
        self.teacher_layers = [teacher_layer] if teacher_layer else []
        self.weight = check_arg(type(self).__name__, "weight", weight)

    def embeddings(self, step: DistillStep) -> tuple[Tensor, Tensor]:
        e_s = step.student_features[self.student_layer] if self.student_layer else step.student_logits
        e_t = step.teacher_features[self.teacher_layer] if self.teacher_layer else step.teacher_logits
        return e_s.flatten(1), e_t.flatten(1)


class RKD(_EmbeddingObjective):
    """Relational KD (Park et al. 2019) on embeddings, distance 25 and angle 50 (term ``rkd``).

    ``student_layer=None`` / ``teacher_layer=None`` use the logits.
    """

    def __init__(
        self,
        student_layer: str | None = "embedding",
        teacher_layer: str | None = "embedding",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        weight: float | Schedule = 1.0,
    ) -> None:
        super().__init__(student_layer, teacher_layer, weight)
        self.distance_weight = check_arg("RKD", "distance_weight", distance_weight)
        self.angle_weight = check_arg("RKD", "angle_weight", angle_weight)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        e_s, e_t = self.embeddings(step)
        value = rkd_loss(e_s, e_t, self.distance_weight, self.angle_weight)
        return [self.term("rkd", value, self.weight, step)]


class PKT(_EmbeddingObjective):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018) (term ``pkt``; reference weight 30000)."""

    def __init__(
        self,
        student_layer: str | None = "embedding",
        teacher_layer: str | None = "embedding",
        weight: float | Schedule = 30000.0,
    ) -> None:
        super().__init__(student_layer, teacher_layer, weight)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        e_s, e_t = self.embeddings(step)
        return [self.term("pkt", pkt_loss(e_s, e_t), self.weight, step)]
