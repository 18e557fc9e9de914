"""LMDistillationModule's ``teacher_cache``: the teacher's top-k log-probabilities read from disk.

The cache itself (building, location, keys, the approximation) is
:mod:`kdlight.training.lm_cache`; this file opens it when ``fit`` starts and turns a training batch
into the objective's terms with the teacher's side looked up by the batch's sample ``index``.
Validation and generated batches (on-policy, sequence-level KD) always run the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from kdlight.core.schedules import Schedule
from kdlight.core.step import LossTerm
from kdlight.objectives import Composite, Objective
from kdlight.objectives.lm import TokenKL
from kdlight.training.lm_cache import TopKTeacherCache, cached_terms, check_cached_objective, open_topk_cache

__all__ = ["CachedTeacher", "cache_temperature"]


def cache_temperature(objective: Objective) -> float:
    """The temperature to cache the teacher at: the (first) TokenKL's, else 1."""
    parts = objective.parts if type(objective) is Composite else [objective]
    for part in parts:
        if isinstance(part, TokenKL) and not isinstance(part.temperature, Schedule):
            return float(part.temperature)
    return 1.0


@dataclass
class CachedTeacher:
    """Where the top-k cache lives (``"auto"`` or a directory), its ``k``, and the opened cache."""

    location: str
    k: int = 64
    cache: TopKTeacherCache | None = field(default=None, repr=False)

    def open(self, module: Any) -> None:
        """Check the objective and the data, then open (or build) the cache of ``module``'s teacher."""
        temperature = cache_temperature(module.objective)
        check_cached_objective(module.objective, temperature)
        data = module.datamodule_capabilities()
        if not (data.indexed_batches and data.has_train_inputs):
            raise ValueError(
                "teacher_cache needs a data module whose training batches carry sample indices into train_inputs() "
                "(e.g. kdlight.data.code_corpus.PythonSourceCorpus); drop teacher_cache for other data"
            )
        if data.augmented:
            raise ValueError(
                f"teacher_cache with randomly augmented training data ({type(data.datamodule).__name__}) would give "
                "stale targets (every view gets the first view's teacher output); turn augmentation off or drop teacher_cache"
            )
        self.cache = open_topk_cache(
            self.location,
            self.k,
            module.teacher,
            data.train_inputs(),
            module.pad_id(),
            data.data_record(),
            temperature,
            teacher_checkpoint=module.teacher_checkpoint,
        )

    def terms(self, module: Any, x: Tensor, labels: Tensor, index: Tensor | None) -> list[LossTerm]:
        """The objective's terms of a data batch, the teacher's side read from the cache."""
        if index is None:
            raise ValueError("teacher_cache is on but the training batch carries no sample 'index'")
        if self.cache.device != x.device:
            self.cache.to(x.device)
        logprobs, ids = self.cache.lookup(index)
        student_logits = module.student(x)
        module._student_taps.pop()
        return cached_terms(
            module.objective,
            student_logits,
            labels,
            logprobs,
            ids,
            self.cache.temperature,
            epoch=module.current_epoch,
            global_step=module.global_step,
        )
