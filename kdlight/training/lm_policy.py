"""Generated training batches for LM distillation: on-policy (GKD) and sequence-level KD.

With probability ``lmbda`` a training batch is replaced by the student's continuations of its
prompts (on-policy distillation, GKD, Agarwal et al. 2024; TRL's ``lmbda``); otherwise, with
``seq_kd``, by the teacher's (sequence-level KD, Kim & Rush 2016; TRL's ``seq_kd``); otherwise the
data batch is used as it is. Only the generated tokens count in the loss
(:func:`~kdlight.training.lm_generation.generated_batch`).

Every draw comes from generators seeded by ``(seed, global_step)``: the choice of a step and its
samples are the same in a resumed fit as in an uninterrupted one, and the choice is the same on
every rank (the samples differ by rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from kdlight.core.modality import Text
from kdlight.data.lm import IGNORE_INDEX
from kdlight.training.lm_generation import GenerationSettings, generated_batch, prompt_rows

__all__ = ["OnPolicy"]

#: tokens that end a generated sequence when the data's vocabulary lists them
EOS_TOKENS = ("<eos>", "</s>", "<|endoftext|>")
#: mixes the step into the seed (a large odd constant: distinct steps give distinct seeds)
_STEP_MIX = 1_000_003


@dataclass
class OnPolicy:
    """Which model generates each training batch's continuation, and how (see the module docstring)."""

    lmbda: float
    seq_kd: bool
    generation: GenerationSettings
    seed: int | None = None  # None: the run's seed (seed_everything), else 0

    @classmethod
    def build(cls, lmbda: float, seq_kd: bool, generation: Any, seed: int | None) -> OnPolicy | None:
        """Check the arguments (one line each); ``None`` when no batch is ever generated."""
        if isinstance(lmbda, bool) or not 0.0 <= float(lmbda) <= 1.0:
            raise ValueError(
                f"lmbda is the fraction of on-policy (student-generated) batches, in [0, 1]; got {lmbda!r}"
            )
        if float(lmbda) == 0.0 and not seq_kd:
            return None
        if generation is None:
            raise ValueError(
                f"lmbda={lmbda} and seq_kd={seq_kd} generate training batches, so they need generation settings; "
                "give generation: {prompt_length: ..., max_new_tokens: ...} (kdlight.training.lm_generation.GenerationSettings)"
            )
        if isinstance(generation, dict):
            generation = GenerationSettings(**generation)
        if not isinstance(generation, GenerationSettings):
            raise ValueError(
                f"generation must be a GenerationSettings (or a dict of its fields), got {type(generation).__name__}"
            )
        return cls(float(lmbda), bool(seq_kd), generation, None if seed is None else int(seed))

    def check(self, text: Text | None, teacher: nn.Module, student: nn.Module) -> None:
        """At setup: prompts fit in the data's sequences, prompt plus continuation in the models."""
        if text is not None and text.max_length is not None and self.generation.prompt_length > text.max_length:
            raise ValueError(
                f"generation.prompt_length={self.generation.prompt_length} is longer than the data's sequences "
                f"(max_length={text.max_length}); lower generation.prompt_length"
            )
        total = self.generation.total_length
        for role, model in (("teacher", teacher), ("student", student)):
            limit = getattr(model, "max_length", None)
            if limit is not None and total > limit:
                raise ValueError(
                    f"{role} accepts at most max_length={limit} tokens but generation makes prompt_length + "
                    f"max_new_tokens = {total}; lower generation.prompt_length or max_new_tokens"
                )

    def base_seed(self) -> int:
        """``seed``, else the run's seed (``seed_everything``; Lightning's ``PL_GLOBAL_SEED``), else 0."""
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_policy(self, step: int) -> bool:
        """Whether the student generates at ``step`` (a fixed function of the seed and the step)."""
        draw = torch.Generator().manual_seed(self.base_seed() * _STEP_MIX + step)
        return bool(torch.rand((), generator=draw) < self.lmbda)

    def batch(self, module: Any, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, str]:
        """``(ids, labels, source)`` of this training step; ``source`` says who wrote the continuation:
        ``"student"`` (on-policy), ``"teacher"`` (sequence-level KD) or ``"data"`` (the batch unchanged)."""
        step = int(module.global_step)
        on_policy = self.on_policy(step)
        if not on_policy and not self.seq_kd:
            return x, labels, "data"
        if not bool(prompt_rows(x, self.generation.prompt_length, module.pad_id()).any()):
            rank_zero_warn(
                f"a training batch has no sequence of generation.prompt_length={self.generation.prompt_length} real "
                "tokens, so it trains on the data as it is; lower prompt_length if this repeats"
            )
            return x, labels, "data"
        source = "student" if on_policy else "teacher"
        sampler = torch.Generator(device=x.device).manual_seed(
            (self.base_seed() * _STEP_MIX + step) * 1_009 + int(module.global_rank) + 1
        )
        model = getattr(module, source)
        ids, new_labels = generated_batch(model, x, self.generation, module.pad_id(), eos_id(module._text), sampler)
        if not bool((new_labels != IGNORE_INDEX).any()):  # every row ended at once: nothing generated counts
            return x, labels, "data"
        return ids, new_labels, source


def eos_id(text: Text | None) -> int | None:
    """The id of the data vocabulary's end-of-sequence token (:data:`EOS_TOKENS`), if it lists one."""
    tokens = getattr(text, "tokens", None) or ()
    return next((tokens.index(name) for name in EOS_TOKENS if name in tokens), None)
