"""A weighted sum of objectives."""

from __future__ import annotations

from torch import nn

from kdlight.core.step import DistillStep, LossTerm
from kdlight.objectives.base import Objective, check_arg


class Composite(Objective):
    """Run several objectives and concatenate their terms (each keeps its own weight).

    Every term name must be unique across the parts, so each can be logged on its own.
    ``scale`` multiplies the weight of every term of the part at the same index.
    """

    def __init__(self, terms: list[Objective], scale: list[float] | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError(
                "terms must hold at least one objective, got [] in Composite; list the objectives to combine"
            )
        if scale is not None and len(scale) != len(terms):
            raise ValueError(
                f"scale must have one factor per term, got {len(scale)} factors for {len(terms)} terms in Composite; "
                "give one factor per term or leave scale out"
            )
        self.parts = nn.ModuleList(terms)
        factors = [1.0] * len(terms) if scale is None else scale
        fix = "a factor multiplies every weight of its part; use 0 to turn the part off"
        self.scale = [check_arg("Composite", f"scale[{i}]", s, fix=fix) for i, s in enumerate(factors)]
        self.student_layers = [name for part in terms for name in part.student_layers]
        self.teacher_layers = [name for part in terms for name in part.teacher_layers]
        self.needs_models = any(part.needs_models for part in terms)

    def build(self, step: DistillStep) -> None:
        for part in self.parts:
            part.build(step)

    def forward(self, step: DistillStep) -> list[LossTerm]:
        terms: list[LossTerm] = []
        for part, factor in zip(self.parts, self.scale):
            terms += [LossTerm(t.name, t.value, t.weight * factor, t.scheduled, t.samples) for t in part(step)]
        names = [t.name for t in terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Composite objective has duplicate term names {duplicates}; each term must appear in one part "
                "only (e.g. use KD's alpha for the CE share instead of adding a CrossEntropy part)"
            )
        return terms
