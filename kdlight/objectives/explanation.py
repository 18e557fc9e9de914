"""Explanation-guided distillation: the student should explain like the teacher (e2KD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.explain.attribution import TRAINING_MAP_KINDS, input_gradient_map
from kdlight.objectives.base import Objective, check_arg


class ExplanationMatching(Objective):
    """``weight * mean(1 - cos(E_t, E_s))`` over the batch (term ``explain``).

    ``E`` is the map of ``kind`` (saliency, input_x_gradient, grad_cam, integrated_gradients)
    for the teacher's top-1 class (Parchami-Araghi et al. 2024). ``E_t`` is detached; ``E_s``
    is built with ``create_graph=True``, so the term trains the student. Grad-CAM takes a layer
    per model (``student_layer`` / ``teacher_layer``; default the model's ``gradcam_layer``, else
    its last conv). Costs one extra forward and double-backward of the student and a
    forward/backward of the teacher per step.
    """

    def __init__(
        self,
        kind: str = "saliency",
        weight: float | Schedule = 1.0,
        student_layer: str | None = None,
        teacher_layer: str | None = None,
        n_steps: int = 8,
    ) -> None:
        super().__init__()
        if kind not in TRAINING_MAP_KINDS:
            raise ValueError(f"unknown explanation kind {kind!r}; valid kinds are: {', '.join(TRAINING_MAP_KINDS)}")
        if n_steps < 1:
            raise ValueError(
                f"n_steps must be >= 1, got {n_steps} in ExplanationMatching; integrated_gradients uses 8-32 steps"
            )
        self.kind, self.weight, self.n_steps = kind, check_arg("ExplanationMatching", "weight", weight), n_steps
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.needs_models = True

    def maps(self, step: DistillStep) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher map (detached) and student map (differentiable) for the teacher's top-1 class."""
        if step.student is None or step.teacher is None:
            raise ValueError("ExplanationMatching needs the models in the DistillStep (needs_models=True)")
        target = step.teacher_logits.argmax(-1)
        x = step.inputs.detach()
        with torch.enable_grad():
            e_t = input_gradient_map(
                step.teacher, x, target, self.kind, create_graph=False, layer=self.teacher_layer, n_steps=self.n_steps
            ).detach()
            e_s = input_gradient_map(
                step.student, x, target, self.kind, create_graph=True, layer=self.student_layer, n_steps=self.n_steps
            )
        return e_t, e_s

    def forward(self, step: DistillStep) -> list[LossTerm]:
        e_t, e_s = self.maps(step)
        cosine = F.cosine_similarity(e_s.flatten(1).float(), e_t.flatten(1).float(), dim=1, eps=1e-8)
        return [self.term("explain", (1.0 - cosine).mean(), self.weight, step)]
