"""Explanation preservation: a compressed student should keep explaining like a reference model."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.core.weights import load_weights
from kdlight.explain.attribution import TRAINING_MAP_KINDS, input_gradient_map
from kdlight.objectives.base import Objective, check_arg

SPECIAL_REFERENCES = ("teacher", "dense_student")


class ExplanationPreservation(Objective):
    """``weight * mean(1 - cos(E_ref, E_s))`` over the batch (term ``preserve``).

    The maps are those of :class:`~kdlight.objectives.ExplanationMatching` (``kind``: saliency,
    input_x_gradient, integrated_gradients, grad_cam) for the teacher's top-1 class; ``E_s`` trains
    the student, ``E_ref`` is detached. ``reference`` names the model whose maps are kept:

    - ``teacher``: the frozen teacher;
    - ``dense_student``: a frozen copy of the student taken when compression starts (the
      compression callbacks hand it over at every epoch start until they compress, the last time
      right before; without one, at the first step);
    - a checkpoint path: the student's architecture loaded with those weights (e.g. the dense KD
      student's ``best.ckpt``), also the way to keep the reference across a resumed fit.

    The copy is held outside the module tree: it is never trained, never in the optimizer and
    never in checkpoints. ``reference_layer`` is the reference's Grad-CAM layer.
    """

    def __init__(
        self,
        reference: str = "dense_student",
        kind: str = "saliency",
        weight: float | Schedule = 1.0,
        student_layer: str | None = None,
        reference_layer: str | None = None,
        n_steps: int = 8,
    ) -> None:
        super().__init__()
        if kind not in TRAINING_MAP_KINDS:
            raise ValueError(f"unknown explanation kind {kind!r}; valid kinds are: {', '.join(TRAINING_MAP_KINDS)}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r} in ExplanationPreservation")
        if not isinstance(reference, str) or not reference:
            raise ValueError(
                f"reference must be {', '.join(SPECIAL_REFERENCES)} or a checkpoint path, got {reference!r} in "
                "ExplanationPreservation"
            )
        self.reference, self.kind, self.n_steps = reference, kind, n_steps
        self.weight = check_arg("ExplanationPreservation", "weight", weight)
        self.student_layer, self.reference_layer = student_layer, reference_layer
        self.needs_models = True
        self.__dict__["_reference_model"] = None  # not a submodule: never trained, saved or optimised

    @property
    def reference_model(self) -> nn.Module | None:
        """The frozen reference copy (None for ``teacher`` or before it was captured)."""
        return self.__dict__["_reference_model"]

    def capture_reference(self, student: nn.Module, refresh: bool = False) -> None:
        """Freeze a copy of ``student`` as it is now (before compression) as the reference; with a
        checkpoint path, load those weights into the copy. A no-op for ``teacher`` or when captured,
        unless ``refresh`` (``dense_student`` only: the student trained on and is still dense)."""
        if (
            self.reference == "teacher"
            or self.reference_model is not None
            and not (refresh and self.reference == "dense_student")
        ):
            return
        frozen = copy.deepcopy(student).requires_grad_(False).eval()
        if self.reference != "dense_student":
            load_weights(frozen, self.reference, role="reference")
        self.__dict__["_reference_model"] = frozen

    def maps(self, step: DistillStep) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference map (detached) and student map (differentiable) for the teacher's top-1 class."""
        if step.student is None or step.teacher is None:
            raise ValueError("ExplanationPreservation needs the models in the DistillStep (needs_models=True)")
        if self.reference == "teacher":
            reference = step.teacher
        else:
            self.capture_reference(step.student)
            reference = self.reference_model.to(step.inputs.device)
        target = step.teacher_logits.argmax(-1)
        x = step.inputs.detach()
        with torch.enable_grad():
            e_ref = input_gradient_map(
                reference, x, target, self.kind, create_graph=False, layer=self.reference_layer, n_steps=self.n_steps
            ).detach()
            e_s = input_gradient_map(
                step.student, x, target, self.kind, create_graph=True, layer=self.student_layer, n_steps=self.n_steps
            )
        return e_ref, e_s

    def forward(self, step: DistillStep) -> list[LossTerm]:
        e_ref, e_s = self.maps(step)
        cosine = F.cosine_similarity(e_s.flatten(1).float(), e_ref.flatten(1).float(), dim=1, eps=1e-8)
        return [self.term("preserve", (1.0 - cosine).mean(), self.weight, step)]


def capture_references(objective: nn.Module, student: nn.Module, refresh: bool = False) -> None:
    """Hand a frozen copy of ``student`` to every :class:`ExplanationPreservation` in ``objective``
    (``refresh``: replace an earlier ``dense_student`` copy: the student is still uncompressed)."""
    for part in objective.modules():
        if isinstance(part, ExplanationPreservation):
            part.capture_reference(student, refresh=refresh)
