"""Explanation-guided distillation: the student should explain like the teacher (e2KD, AD-KD).

On token ids the maps are taken at each model's embedding output and reduced over the hidden
dimension (:mod:`kdlight.explain.attribution.tokens`): summed for input x gradient and integrated
gradients, the L2 norm for saliency (a bare gradient sums to about 0 behind a LayerNorm); padding
is 0 in every map and, with ``DistillStep.attention_mask``, masked out of the comparison.
"""

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
    forward/backward of the teacher per step. On token ids (kinds saliency, input_x_gradient,
    integrated_gradients) the maps are ``[N, T]`` at the embedding output (saliency: each token's
    gradient L2 norm; the others: summed over the hidden dimension) and the cosine is taken over
    the real positions only (``step.attention_mask``).
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
        e_t, e_s = real_positions(self.maps(step), step.attention_mask)
        cosine = F.cosine_similarity(e_s.flatten(1).float(), e_t.flatten(1).float(), dim=1, eps=1e-8)
        return [self.term("explain", (1.0 - cosine).mean(), self.weight, step)]


def real_positions(maps: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``maps`` ``[R, T]`` with padded positions zeroed (``attention_mask`` ``[N, T]``, True at real
    tokens, repeated over the ``R / N`` views); unchanged without a mask."""
    if attention_mask is None:
        return maps
    mask = attention_mask.bool()
    return tuple(m * mask.repeat(m.shape[0] // mask.shape[0], 1).to(m.device) for m in maps)


class AttributionDistillation(Objective):
    """AD-KD (Wu et al., ACL 2023, "AD-KD: Attribution-Driven Knowledge Distillation for Language
    Model Compression"): multi-view integrated-gradients attribution matching, term ``attribution``.

    For each of the teacher's ``top_k`` most probable classes (a view; all classes when there are at
    most ``top_k``), ``a_t`` (teacher, detached) and ``a_s`` (student, ``create_graph=True``) are the
    ``n_steps`` integrated-gradients maps of that class's logit: on token ids at the embedding output
    from the PAD reference sequence, summed over the hidden dimension (0 at padding); on floating
    inputs on the inputs from zeros. Each map is L2-normalised over its positions and the loss is
    ``weight * mean_i sum_v || a_t / ||a_t|| - a_s / ||a_s|| ||_2`` -- the paper's multi-view
    attribution loss as summarised in its Section 3 (the equation numbers could not be checked
    offline). Differences from the authors' code (github.com/brucewsy/AD-KD, ``loss.py``): it takes
    gradients of log-probabilities, scores a token by the L2 norm of its IG vector (over the
    teacher's top hidden units) from a zero embedding of BERT's whole embedding block, and compares
    the normalised maps with a summed squared error; here the maps are kdlight's signed token maps.
    Cost: ``views * n_steps`` forward+backward rows of the teacher and forward+double-backward of
    the student per sample.
    """

    def __init__(self, weight: float | Schedule = 1.0, top_k: int = 3, n_steps: int = 8) -> None:
        super().__init__()
        for name, value in (("top_k", top_k), ("n_steps", n_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} must be an integer >= 1, got {value!r} in AttributionDistillation; AD-KD uses "
                    f"top_k = all classes of a GLUE task (<= 3) and 1-8 steps"
                )
        self.weight, self.top_k, self.n_steps = check_arg("AttributionDistillation", "weight", weight), top_k, n_steps
        self.needs_models = True

    def maps(self, step: DistillStep) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher (detached) and student (differentiable) maps ``[V * N, ...]``, view-major: rows
        ``v * N + i`` explain sample ``i``'s ``v``-th most probable teacher class."""
        if step.student is None or step.teacher is None:
            raise ValueError("AttributionDistillation needs the models in the DistillStep (needs_models=True)")
        views = min(self.top_k, step.teacher_logits.shape[1])
        target = step.teacher_logits.detach().topk(views, dim=1).indices.t().reshape(-1)
        x = step.inputs.detach()
        x = x.repeat(views, *(1,) * (x.dim() - 1))
        with torch.enable_grad():
            a_t = input_gradient_map(
                step.teacher, x, target, "integrated_gradients", create_graph=False, n_steps=self.n_steps
            ).detach()
            a_s = input_gradient_map(
                step.student, x, target, "integrated_gradients", create_graph=True, n_steps=self.n_steps
            )
        return a_t, a_s

    def forward(self, step: DistillStep) -> list[LossTerm]:
        a_t, a_s = real_positions(self.maps(step), step.attention_mask)
        gap = F.normalize(a_t.flatten(1).float(), dim=1) - F.normalize(a_s.flatten(1).float(), dim=1)
        per_view = torch.linalg.vector_norm(gap, dim=1).view(-1, step.inputs.shape[0])
        return [self.term("attribution", per_view.sum(0).mean(), self.weight, step)]
