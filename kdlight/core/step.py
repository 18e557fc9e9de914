"""The record one distillation step hands to an objective."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

#: label of a sample that has none (transfer sets, mixed inputs); label terms skip it
UNLABELED = -1


@dataclass
class DistillStep:
    """Everything an objective may read for one batch.

    ``student_features`` / ``teacher_features`` map a submodule path (e.g. ``"layer3"``) to that
    submodule's output, captured by :class:`kdlight.training.taps.FeatureTaps`. ``target`` is ``None`` when
    no sample of the batch has a label, and holds :data:`UNLABELED` for the unlabeled ones of a
    mixed batch (labeled samples first). ``student`` / ``teacher`` are the models themselves, for objectives that
    need to differentiate through them (explanation matching). ``attention_mask`` is ``[N, T]``
    True at real tokens for token inputs (``None`` for other inputs): losses over positions skip
    padding. ``labels`` is ``[N, T]`` next-token targets of a causal LM batch, already shifted
    (``-100`` = the position does not count), ``None`` for other batches.
    """

    inputs: Tensor
    target: Tensor | None
    student_logits: Tensor
    teacher_logits: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    epoch: int = 0
    global_step: int = 0
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    attention_mask: Tensor | None = None
    labels: Tensor | None = None


@dataclass
class LossTerm:
    """One named term of an objective: ``weight * value`` enters the total loss."""

    name: str
    value: Tensor
    weight: float = 1.0
    scheduled: bool = False  # the weight follows a Schedule: log it too
    samples: str = "all"  # which samples the term saw: "all" or "labeled"

    @property
    def weighted(self) -> Tensor:
        return self.value * self.weight


def total_loss(terms: list[LossTerm]) -> Tensor:
    """Weighted sum of the terms."""
    if not terms:
        raise ValueError("the objective returned no loss terms")
    return torch.stack([t.weighted for t in terms]).sum()
