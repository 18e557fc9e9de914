"""Token-level distillation objectives for causal language models.

Each class wraps one divergence of :mod:`kdlight.functional.lm` and returns one named
:class:`~kdlight.core.step.LossTerm`. They read ``step.student_logits`` / ``step.teacher_logits``
``[B, T, V]`` (next-token logits) and ``step.labels`` ``[B, T]`` (next-token targets, already
shifted; ``-100`` marks a position that does not count: padding and the last position), so padding
never enters a loss. The value is the mean over counted positions; temperature divides both logits
with no ``T^2`` factor (the LM convention). Combine terms with
:class:`~kdlight.objectives.Composite`, e.g. ``Composite([TokenKL(), NextTokenCE(weight=0.5)])``.

Term names: ``fkl`` / ``rkl`` (:class:`TokenKL`), ``jsd`` (:class:`GeneralizedJSD`), ``skl`` /
``srkl`` (:class:`SkewKL`), ``tvd`` (:class:`TokenTVD`), ``ce`` (:class:`NextTokenCE`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.functional.lm import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from kdlight.objectives.base import Objective, check_arg
from kdlight.objectives.logits import temperature_at

__all__ = ["TokenKL", "GeneralizedJSD", "SkewKL", "TokenTVD", "NextTokenCE", "IGNORE_INDEX"]

#: label of a position that does not count (Hugging Face convention)
IGNORE_INDEX = -100
DIRECTIONS = ("forward", "reverse")


def step_labels(step: DistillStep, owner: str) -> Tensor:
    """The step's next-token labels ``[B, T]``, or a one-line error naming the fix."""
    if step.labels is None:
        raise ValueError(
            f"{owner} needs next-token labels, but the step has none; train it with "
            "kdlight.training.lm.LMDistillationModule on batches in the LM convention ({'inputs', 'labels', ...})"
        )
    if step.student_logits.dim() != 3 or tuple(step.labels.shape) != tuple(step.student_logits.shape[:2]):
        raise ValueError(
            f"{owner} needs next-token logits [B, T, V] and labels [B, T], got logits "
            f"{list(step.student_logits.shape)} and labels {list(step.labels.shape)}; use a causal LM"
        )
    return step.labels


def check_direction(owner: str, direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r} in {owner}; choose one of {', '.join(DIRECTIONS)}")
    return direction


class _TokenDivergence(Objective):
    """Shared parts: a weight (number or Schedule), a temperature, an optional chunk size."""

    def __init__(self, weight: float | Schedule, temperature: float | Schedule, chunk_size: int | None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.weight = check_arg(owner, "weight", weight)
        self.temperature = check_arg(
            owner, "temperature", temperature, "temperature", fix="1.0 is usual for language models"
        )
        if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
            raise ValueError(
                f"chunk_size must be a positive number of positions, got {chunk_size} in {owner}; "
                "leave it None for the default"
            )
        self.chunk_size = chunk_size

    def options(self, step: DistillStep) -> dict:
        """Keyword arguments every functional divergence takes."""
        labels = step_labels(step, type(self).__name__)
        return {
            "labels": labels,
            "temperature": temperature_at(self, self.temperature, step),
            "chunk_size": self.chunk_size,
        }


class TokenKL(_TokenDivergence):
    """``KL(p_t || p_s)`` (``direction="forward"``, term ``fkl``) or ``KL(p_s || p_t)`` (``"reverse"``, ``rkl``)."""

    def __init__(
        self,
        direction: str = "forward",
        temperature: float | Schedule = 1.0,
        weight: float | Schedule = 1.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(weight, temperature, chunk_size)
        self.direction = check_direction("TokenKL", direction)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        divergence, name = (forward_kl, "fkl") if self.direction == "forward" else (reverse_kl, "rkl")
        value = divergence(step.student_logits, step.teacher_logits, **self.options(step))
        return [self.term(name, value, self.weight, step)]


class GeneralizedJSD(_TokenDivergence):
    """GKD's ``beta KL(p_t||m) + (1-beta) KL(p_s||m)``, ``m = beta p_t + (1-beta) p_s`` (term ``jsd``).

    ``beta = 0`` is forward KL and ``beta = 1`` reverse KL, as in TRL."""

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float | Schedule = 1.0,
        weight: float | Schedule = 1.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(weight, temperature, chunk_size)
        self.beta = check_arg(
            "GeneralizedJSD", "beta", beta, "fraction", "0 = forward KL, 1 = reverse KL, 0.5 is usual"
        )

    def forward(self, step: DistillStep) -> list[LossTerm]:
        value = generalized_jsd(step.student_logits, step.teacher_logits, beta=self.beta, **self.options(step))
        return [self.term("jsd", value, self.weight, step)]


class SkewKL(_TokenDivergence):
    """DistiLLM's skew KL: ``KL(p_t || a p_t + (1-a) p_s)`` (``direction="forward"``, term ``skl``) or
    ``KL(p_s || (1-a) p_t + a p_s)`` (``"reverse"``, term ``srkl``), ``a = alpha``."""

    def __init__(
        self,
        direction: str = "forward",
        alpha: float = 0.1,
        temperature: float | Schedule = 1.0,
        weight: float | Schedule = 1.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(weight, temperature, chunk_size)
        self.direction = check_direction("SkewKL", direction)
        self.alpha = check_arg("SkewKL", "alpha", alpha, "fraction", "0 = plain KL, DistiLLM uses 0.1")

    def forward(self, step: DistillStep) -> list[LossTerm]:
        divergence, name = (skew_forward_kl, "skl") if self.direction == "forward" else (skew_reverse_kl, "srkl")
        value = divergence(step.student_logits, step.teacher_logits, alpha=self.alpha, **self.options(step))
        return [self.term(name, value, self.weight, step)]


class TokenTVD(_TokenDivergence):
    """Total variation distance ``1/2 sum_v |p_t - p_s|`` per token, in [0, 1] (term ``tvd``)."""

    def __init__(
        self, temperature: float | Schedule = 1.0, weight: float | Schedule = 1.0, chunk_size: int | None = None
    ) -> None:
        super().__init__(weight, temperature, chunk_size)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        value = total_variation(step.student_logits, step.teacher_logits, **self.options(step))
        return [self.term("tvd", value, self.weight, step)]


class NextTokenCE(Objective):
    """The student's next-token cross-entropy with the data, in float32, mean over counted positions (term ``ce``)."""

    def __init__(self, weight: float | Schedule = 1.0) -> None:
        super().__init__()
        self.weight = check_arg("NextTokenCE", "weight", weight)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        labels = step_labels(step, "NextTokenCE")
        value = next_token_ce(step.student_logits, labels)
        return [self.term("ce", value, self.weight, step)]


def next_token_ce(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Token cross-entropy (float32, float64 kept) of ``logits`` ``[B, T, V]``: the mean over positions
    whose label is not -100, or with ``reduction="none"`` per token ``[B, T]`` (0 where the label is -100)."""
    if reduction == "mean" and not bool((labels != IGNORE_INDEX).any()):
        raise ValueError(
            "next-token cross-entropy: every label is -100, so no position counts; check that the batch's labels "
            "are the shifted inputs (-100 only at padding and the last position)"
        )
    flat = logits.flatten(0, 1)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    ce = F.cross_entropy(flat, labels.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)
    return ce if reduction == "mean" else ce.view(labels.shape)
