"""Objectives on transformer internals: TinyBERT hidden-state and TinyBERT / MiniLM attention matching.

Both read the tap points that kdlight's text models share (``hidden_states.<i>``, ``attentions.<i>``;
see :class:`kdlight.models.TransformerClassifier` and :class:`kdlight.models.HFClassifier`) and count
real tokens only: ``DistillStep.attention_mask`` ``[N, T]`` (True at real tokens; ``None``: all).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.objectives.base import Objective, check_arg

HIDDEN_LOSSES = ("mse",)
ATTENTION_LOSSES = ("mse", "kl")


def check_pairs(owner: str, pairs: list[list[int]]) -> list[tuple[int, int]]:
    """``pairs`` as ``(student_index, teacher_index)`` tuples, or a one-line ValueError."""
    checked = []
    for pair in pairs if isinstance(pairs, (list, tuple)) else [pairs]:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pair)
        ):
            raise ValueError(
                f"pairs of {owner} must be [student_layer, teacher_layer] index pairs >= 0, e.g. [[1, 2], [2, 4]]; "
                f"got {pair!r}"
            )
        checked.append((int(pair[0]), int(pair[1])))
    if not checked:
        raise ValueError(f"{owner} needs at least one [student_layer, teacher_layer] pair, got none")
    return checked


def check_choice(owner: str, name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name} of {owner} must be one of {', '.join(valid)}, got {value!r}")
    return value


def real_positions(step: DistillStep, features: Tensor) -> Tensor:
    """``[N, T]`` float weights: 1 at real tokens, 0 at padding (all 1 without a mask)."""
    n, t = features.shape[0], features.shape[2] if features.dim() == 4 else features.shape[1]
    if step.attention_mask is None:
        return torch.ones(n, t, dtype=features.dtype, device=features.device)
    if tuple(step.attention_mask.shape) != (n, t):
        raise ValueError(
            f"attention_mask has shape {list(step.attention_mask.shape)} but the tapped features cover [{n}, {t}] "
            f"tokens; tap hidden_states.<i> / attentions.<i> of a kdlight text model"
        )
    return step.attention_mask.to(features.dtype)


class HiddenStateMatching(Objective):
    """TinyBERT hidden-state loss (term ``hidden``): ``MSE(h_s W, h_t)`` over real tokens, mean over pairs.

    Each ``[student_layer, teacher_layer]`` pair taps ``hidden_states.<i>`` of both models (``0``:
    embeddings, ``depth``: last layer). ``W`` is a learned linear projection per pair when the
    widths differ (identity when equal), built from the tapped shapes at setup, trained with the
    student and rebuilt from the saved shapes when a checkpoint is loaded. The squared error is
    averaged over the hidden dimension and the unpadded positions.
    """

    def __init__(self, pairs: list[list[int]], weight: float | Schedule = 1.0, loss: str = "mse") -> None:
        super().__init__()
        self.pairs = check_pairs("HiddenStateMatching", pairs)
        self.weight = check_arg("HiddenStateMatching", "weight", weight)
        self.loss = check_choice("HiddenStateMatching", "loss", loss, HIDDEN_LOSSES)
        self.student_layers = [f"hidden_states.{s}" for s, _ in self.pairs]
        self.teacher_layers = [f"hidden_states.{t}" for _, t in self.pairs]
        self.projections: nn.ModuleList | None = None

    def build(self, step: DistillStep) -> None:
        self.build_from_shapes(
            [tuple(step.student_features[name].shape) for name in self.student_layers],
            [tuple(step.teacher_features[name].shape) for name in self.teacher_layers],
        )

    def build_from_shapes(self, student_shapes: list[tuple[int, ...]], teacher_shapes: list[tuple[int, ...]]) -> None:
        """One projection per pair from the ``[N, T, D]`` shapes of the tapped hidden states."""
        if self.projections is not None:
            return
        for (s, t), s_shape, t_shape in zip(self.pairs, student_shapes, teacher_shapes, strict=True):
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise ValueError(
                    f"HiddenStateMatching pair [{s}, {t}] taps features of shapes {list(s_shape)} and {list(t_shape)}; "
                    f"hidden states are [N, T, D]: use a kdlight text model (TransformerClassifier, HFClassifier)"
                )
        self.projections = nn.ModuleList(
            nn.Linear(s_shape[-1], t_shape[-1]) if s_shape[-1] != t_shape[-1] else nn.Identity()
            for s_shape, t_shape in zip(student_shapes, teacher_shapes, strict=True)
        )

    def forward(self, step: DistillStep) -> list[LossTerm]:
        if self.projections is None:
            raise RuntimeError("HiddenStateMatching.build() was not called; DistillationModule.setup() builds it")
        losses = []
        for projection, s_name, t_name in zip(self.projections, self.student_layers, self.teacher_layers):
            h_s, h_t = projection(step.student_features[s_name]), step.teacher_features[t_name].detach()
            real = real_positions(step, h_s)
            per_position = (h_s - h_t.to(h_s.dtype)).square().mean(-1)
            losses.append((per_position * real).sum() / real.sum().clamp(min=1))
        return [self.term("hidden", torch.stack(losses).mean(), self.weight, step)]


class AttentionMatching(Objective):
    """Attention-map matching between paired layers (term ``attention``), mean over pairs.

    Each ``[student_layer, teacher_layer]`` pair taps ``attentions.<i>`` (``[N, heads, T, T]``
    probabilities). Only real query and key positions count.

    * ``loss="mse"`` (TinyBERT): mean squared difference of the probabilities over every (head,
      real query, real key) entry. Head counts must match.
    * ``loss="kl"`` (MiniLM): ``KL(teacher || student)`` of each real query's distribution over the
      keys, mean over heads and real queries. When the head counts differ, each model's
      probabilities are first averaged over its heads (still a distribution per query), so a
      4-head student can learn from a 12-head teacher.
    """

    def __init__(self, pairs: list[list[int]], weight: float | Schedule = 1.0, loss: str = "mse") -> None:
        super().__init__()
        self.pairs = check_pairs("AttentionMatching", pairs)
        self.weight = check_arg("AttentionMatching", "weight", weight)
        self.loss = check_choice("AttentionMatching", "loss", loss, ATTENTION_LOSSES)
        self.student_layers = [f"attentions.{s}" for s, _ in self.pairs]
        self.teacher_layers = [f"attentions.{t}" for _, t in self.pairs]

    def build(self, step: DistillStep) -> None:
        for s_name, t_name in zip(self.student_layers, self.teacher_layers):
            self._check(step.student_features[s_name].shape, step.teacher_features[t_name].shape, s_name, t_name)

    def _check(self, s_shape: torch.Size, t_shape: torch.Size, s_name: str, t_name: str) -> None:
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise ValueError(
                f"AttentionMatching taps {s_name} {list(s_shape)} and {t_name} {list(t_shape)}; attention maps are "
                f"[N, heads, T, T]: use a kdlight text model (TransformerClassifier, HFClassifier)"
            )
        if self.loss == "mse" and s_shape[1] != t_shape[1]:
            raise ValueError(
                f"AttentionMatching(loss='mse') compares attention maps head by head, but the student's {s_name} has "
                f"{s_shape[1]} heads and the teacher's {t_name} {t_shape[1]}; use loss='kl' (averages over heads) "
                f"or give both models the same number of heads"
            )

    def forward(self, step: DistillStep) -> list[LossTerm]:
        losses = []
        for s_name, t_name in zip(self.student_layers, self.teacher_layers):
            a_s, a_t = step.student_features[s_name], step.teacher_features[t_name].detach()
            self._check(a_s.shape, a_t.shape, s_name, t_name)
            a_t = a_t.to(a_s.dtype)
            if a_s.shape[1] != a_t.shape[1]:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
            real = real_positions(step, a_s)
            queries, keys = real[:, None, :, None], real[:, None, None, :]
            if self.loss == "mse":  # mean over every (head, real query, real key) entry
                cells = (queries * keys).expand_as(a_s)
                losses.append(((a_s - a_t).square() * cells).sum() / cells.sum().clamp(min=1))
                continue
            log_ratio = torch.xlogy(a_t, a_t) - a_t * a_s.clamp(min=torch.finfo(a_s.dtype).tiny).log()
            per_query = (log_ratio * keys).sum(-1)  # KL of each (head, query) row over the real keys
            rows = queries.squeeze(-1).expand_as(per_query)
            losses.append((per_query * rows).sum() / rows.sum().clamp(min=1))
        return [self.term("attention", torch.stack(losses).mean(), self.weight, step)]
