"""LMDistillationModule: token-level distillation of a causal language model."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from kdlight.core.batch import as_batch
from kdlight.core.step import DistillStep, LossTerm, total_loss
from kdlight.data.lm import next_token_labels
from kdlight.functional.lm import forward_kl
from kdlight.objectives import Objective
from kdlight.objectives.lm import IGNORE_INDEX, TokenKL, next_token_ce
from kdlight.training.distillation import DistillationModule

__all__ = ["LMDistillationModule", "check_lm_logits", "next_token_labels"]  # next_token_labels: kdlight.data.lm


class LMDistillationModule(DistillationModule):
    """Distil a causal LM ``teacher`` into ``student`` token by token (default objective: forward KL).

    Both models follow kdlight's LM convention: ids ``[B, T]`` (right-padded with
    ``pad_token_id``) in, next-token logits ``[B, T, V]`` out. Batches are dicts
    ``{"inputs", "attention_mask", "labels", "index"}`` whose ``labels`` are the shifted next tokens
    with ``-100`` where a position does not count (missing labels are derived from the inputs and
    the padding id); the objective reads them from ``DistillStep.labels``.

    The teacher is handled as in :class:`~kdlight.training.distillation.DistillationModule`: frozen
    (no gradients, eval mode), never in the optimizer, loaded from ``teacher_checkpoint`` or used as
    given with ``teacher_as_given=True``, checked against the data's vocabulary, padding id and
    length. Training logs ``train/loss`` and ``train/loss_<term>`` per objective term.
    Validation/test log, over counted positions of the whole epoch: ``<split>/student_ppl`` and
    ``<split>/teacher_ppl`` (exp of the mean token cross-entropy, :class:`torchmetrics.text.Perplexity`),
    ``<split>/agreement`` (next-token top-1 agreement), ``<split>/kl`` (token-level
    ``KL(p_t || p_s)``, temperature 1) and ``<split>/loss`` (the student's mean token cross-entropy).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        objective: Objective | None = None,
        teacher_checkpoint: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        check_finite: bool = True,
        teacher_as_given: bool = False,
        allow_teacher_data_overlap: bool = False,
    ) -> None:
        super().__init__(
            teacher,
            student,
            objective if objective is not None else TokenKL(),
            teacher_checkpoint=teacher_checkpoint,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            check_finite=check_finite,
            teacher_as_given=teacher_as_given,
            allow_teacher_data_overlap=allow_teacher_data_overlap,
        )
        self.hparams.clear()  # DistillationModule saved its own arguments; keep only this class's
        self.save_init_args(objects=["teacher", "student", "objective", "optimizer", "lr_scheduler"])

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._attach_taps()
        x = self.example_input()
        self.check_text(x, teacher=self.teacher, student=self.student)
        self._text = self.text_modality()
        step = self._shape_step(x)
        check_lm_logits(x, step.teacher_logits, step.student_logits)
        step.labels = next_token_labels(x, self.pad_id())
        self.build_objective(step)
        for split in ("val", "test"):
            metrics = {
                "student_ppl": Perplexity(ignore_index=IGNORE_INDEX),
                "teacher_ppl": Perplexity(ignore_index=IGNORE_INDEX),
                "agreement": MeanMetric(),
                "kl": MeanMetric(),
            }
            setattr(self, f"{split}_metrics", nn.ModuleDict(metrics))

    def pad_id(self) -> int:
        """The padding id: the data's (Text modality), else the student's ``pad_token_id``."""
        if self._text is not None:
            return int(self._text.pad_id)
        pad = getattr(self.student, "pad_token_id", None)
        if pad is None:
            raise ValueError(
                f"student ({type(self.student).__name__}) has no pad_token_id and the data module no Text modality; "
                "give the student a pad_token_id or the batches 'labels'"
            )
        return int(pad)

    # -- steps ---------------------------------------------------------------------------------
    def lm_inputs(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Token ids ``[B, T]`` and shifted next-token labels ``[B, T]`` of a batch."""
        batch = as_batch(batch)
        if batch.transfer is not None:
            raise ValueError("LMDistillationModule takes no transfer set; put all token sequences in one stream")
        self.check_attention_mask(batch)
        x, labels = batch.inputs, batch.extras.get("labels")
        if labels is None:
            return x, next_token_labels(x, self.pad_id())
        if tuple(labels.shape) != tuple(x.shape) or labels.dtype.is_floating_point:
            raise ValueError(
                f"batch labels must be integer ids shaped like the inputs {list(x.shape)}, got {labels.dtype} "
                f"{list(labels.shape)}; give labels[:, t] = inputs[:, t + 1] with -100 where nothing counts"
            )
        return x, labels

    def lm_step(self, x: Tensor, labels: Tensor) -> tuple[DistillStep, list[LossTerm]]:
        """Teacher logits (no grad), student logits and the objective's terms for one batch."""
        return self.distill_step(x, None, labels=labels, attention_mask=x != self.pad_id())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, labels = self.lm_inputs(batch)
        _, terms = self.lm_step(x, labels)
        loss = total_loss(terms)
        scalars = {"train/loss": loss, **{f"train/loss_{t.name}": t.value for t in terms}}
        weights = {f"train/weight_{t.name}": t.weight for t in terms if t.scheduled} or None
        self.record_training(scalars, extra=weights)
        return loss

    def _evaluate(self, batch: Any, split: str, batch_idx: int = 0) -> None:
        x, labels = self.lm_inputs(batch)
        s_logits, t_logits = self.student(x), self._validation_teacher(x, split, batch_idx)
        self._student_taps.pop(), self._teacher_taps.pop()
        counted = labels != IGNORE_INDEX
        tokens = int(counted.sum())
        if tokens == 0:  # a batch of padding only: nothing to score
            return
        metrics = getattr(self, f"{split}_metrics")
        metrics["student_ppl"].update(s_logits.float(), labels)
        metrics["teacher_ppl"].update(t_logits.float(), labels)
        agree = (s_logits.argmax(-1) == t_logits.argmax(-1))[counted].float().mean()
        metrics["agreement"].update(agree, weight=tokens)
        metrics["kl"].update(forward_kl(s_logits, t_logits, labels=labels), weight=tokens)
        loss = next_token_ce(s_logits, labels)
        self.log(f"{split}/loss", loss, on_epoch=True, sync_dist=True, batch_size=tokens)
        self.log(f"{split}/student_ppl", metrics["student_ppl"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/teacher_ppl", metrics["teacher_ppl"], on_epoch=True)
        self.log(f"{split}/agreement", metrics["agreement"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/kl", metrics["kl"], on_epoch=True)


def check_lm_logits(ids: Tensor, teacher_logits: Tensor, student_logits: Tensor) -> None:
    """Both models return next-token logits ``[B, T, V]`` for ids ``[B, T]``, with one vocabulary."""
    for role, logits in (("teacher", teacher_logits), ("student", student_logits)):
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
            raise ValueError(
                f"{role} returned logits {list(logits.shape)} for ids {list(ids.shape)}; a causal LM must return "
                "next-token logits [B, T, V] (use kdlight.training.DistillationModule for classifiers)"
            )
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(
            f"teacher predicts over {teacher_logits.shape[-1]} tokens but student over {student_logits.shape[-1]}; "
            "build both with the data's tokenizer (the same vocab_size)"
        )
