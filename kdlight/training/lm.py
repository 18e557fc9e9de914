"""Causal language models: plain next-token training (LMModule) and token-level distillation (LMDistillationModule)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from kdlight.core.batch import as_batch
from kdlight.core.modality import Text
from kdlight.core.step import DistillStep, LossTerm, total_loss
from kdlight.data.lm import next_token_labels
from kdlight.functional.lm import forward_kl
from kdlight.objectives import Objective
from kdlight.objectives.lm import IGNORE_INDEX, TokenKL, next_token_ce
from kdlight.training.base import SupervisedBase, dry_forward
from kdlight.training.distillation import DistillationModule
from kdlight.training.lm_generation import GenerationSettings
from kdlight.training.lm_policy import OnPolicy
from kdlight.training.lm_positions import PositionCurves, log_position_table
from kdlight.training.lm_topk import CachedTeacher

__all__ = ["LMModule", "LMDistillationModule", "LMBatches", "check_lm_logits", "next_token_labels"]


class LMBatches:
    """What both LM modules share: LM batches (ids and shifted labels), the padding id, per-token
    cross-entropy and the per-position curves of val/test (``self.per_position[split]``)."""

    _text: Text | None

    def lm_network(self) -> nn.Module:  # pragma: no cover - abstract
        """The network being trained (its ``pad_token_id`` is the fallback padding id)."""
        raise NotImplementedError

    def pad_id(self) -> int:
        """The padding id: the data's (Text modality), else the trained network's ``pad_token_id``."""
        if self._text is not None:
            return int(self._text.pad_id)
        network = self.lm_network()
        pad = getattr(network, "pad_token_id", None)
        if pad is None:
            raise ValueError(
                f"{type(network).__name__} has no pad_token_id and the data module no Text modality; "
                "give the model a pad_token_id or the batches 'labels'"
            )
        return int(pad)

    def lm_inputs(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Token ids ``[B, T]`` and shifted next-token labels ``[B, T]`` of a batch."""
        batch = as_batch(batch)
        if batch.transfer is not None:
            raise ValueError(f"{type(self).__name__} takes no transfer set; put all token sequences in one stream")
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

    def position_curves(self, x: Tensor, teacher: bool) -> PositionCurves:
        """A fresh per-position metric sized to the data's ``max_length`` (else the example's length)."""
        length = self._text.max_length if self._text is not None and self._text.max_length else x.shape[1]
        return PositionCurves(int(length), teacher=teacher)

    def finish_positions(self, split: str) -> None:
        """Epoch end: compute the curves (summed over ranks), keep them, log them as a table."""
        metric = getattr(self, f"{split}_metrics")["positions"]
        curves = metric.compute()
        metric.reset()
        if not len(curves["position"]):
            message = (
                f"no {split} batch counted a single position: every label of the {split} epoch is -100 (padding or "
                "sequences of one token), so loss and perplexity are undefined; give sequences of >= 2 real tokens"
            )
            if self.trainer.sanity_checking:  # a later full epoch may still count tokens
                rank_zero_warn(message)
                return
            raise ValueError(message)
        if not hasattr(self, "per_position"):
            self.per_position = {}
        self.per_position[split] = curves
        log_position_table(self.trainer, f"{split}/per_position", curves)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.finish_positions("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.finish_positions("test")


class LMModule(LMBatches, SupervisedBase):
    """Train one causal LM ``model`` on next-token prediction: teachers and scratch baselines.

    The network is ``self.model``, so its checkpoint can be handed to
    ``LMDistillationModule(teacher_checkpoint=...)``; its checkpoints record the data module
    (``kdlight_data``, with the tokenizer), so a student on another vocabulary or on the samples it
    trained on is refused. Batches follow the LM convention (labels derived from the inputs when
    absent). Logs ``train/loss`` (mean token cross-entropy over counted positions) and for
    val/test ``<split>/loss`` and ``<split>/ppl`` (:class:`torchmetrics.text.Perplexity`), plus the
    per-position curves (``self.per_position[split]``, a W&B table ``<split>/per_position``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, None)
        self.save_init_args(objects=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self._text: Text | None = None
        self.per_position: dict[str, dict[str, Tensor]] = {}

    def lm_network(self) -> nn.Module:
        return self.model

    def setup(self, stage: str) -> None:
        x = self.example_input()
        self.check_text(x, model=self.model)
        self._text = self.text_modality()
        check_causal_logits(x, dry_forward(self.model, x), "model")
        for split in ("val", "test"):
            metrics = {"ppl": Perplexity(ignore_index=IGNORE_INDEX), "positions": self.position_curves(x, False)}
            setattr(self, f"{split}_metrics", nn.ModuleDict(metrics))

    def trainable_parameters(self):
        return self.model.parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, labels = self.lm_inputs(batch)
        loss = next_token_ce(self.model(x), labels)
        self.record_training({"train/loss": loss})
        return loss

    def _evaluate(self, batch: Any, split: str, batch_idx: int = 0) -> None:
        x, labels = self.lm_inputs(batch)
        logits = self.model(x)
        counted = labels != IGNORE_INDEX
        ce = next_token_ce(logits, labels, reduction="none")
        metrics = getattr(self, f"{split}_metrics")
        metrics["positions"].update(counted, ce)
        tokens = int(counted.sum())
        if tokens == 0:  # a batch of padding only: nothing to score
            return
        metrics["ppl"].update(logits.float(), labels)
        self.log(f"{split}/loss", ce.sum() / tokens, on_epoch=True, sync_dist=True, batch_size=tokens)
        self.log(f"{split}/ppl", metrics["ppl"], on_epoch=True, prog_bar=split == "val")


class LMDistillationModule(LMBatches, DistillationModule):
    """Distil a causal LM ``teacher`` into ``student`` token by token (default objective: forward KL).

    Both models follow kdlight's LM convention: ids ``[B, T]`` (right-padded with
    ``pad_token_id``) in, next-token logits ``[B, T, V]`` out. Batches are dicts
    ``{"inputs", "attention_mask", "labels", "index"}`` whose ``labels`` are the shifted next tokens
    with ``-100`` where a position does not count (missing labels are derived from the inputs and
    the padding id); the objective reads them from ``DistillStep.labels``.

    The teacher is handled as in :class:`~kdlight.training.distillation.DistillationModule`: frozen
    (no gradients, eval mode), never in the optimizer, loaded from ``teacher_checkpoint`` (e.g. an
    :class:`LMModule`'s) or used as given with ``teacher_as_given=True``, checked against the data's
    vocabulary, padding id and length. Training logs ``train/loss`` and ``train/loss_<term>`` per
    objective term. Validation/test log, over counted positions of the whole epoch:
    ``<split>/student_ppl`` and ``<split>/teacher_ppl`` (:class:`torchmetrics.text.Perplexity`),
    ``<split>/agreement`` (next-token top-1 agreement), ``<split>/kl`` (token-level
    ``KL(p_t || p_s)``, temperature 1), ``<split>/loss`` (the student's mean token cross-entropy)
    and the per-position curves (``self.per_position[split]``, a W&B table ``<split>/per_position``).

    Generated training batches (:class:`~kdlight.training.lm_policy.OnPolicy`): with probability
    ``lmbda`` a training batch is replaced by the student's continuations of its first
    ``generation.prompt_length`` tokens (on-policy GKD, Agarwal et al. 2024; TRL's ``lmbda``),
    otherwise with ``seq_kd=True`` by the teacher's (sequence-level KD, Kim & Rush 2016); only the
    generated tokens count. The draw is seeded by ``generation_seed`` (default: the run's
    ``seed_everything``) and the global step, so it is the same on resume (with gradient
    accumulation, the micro-batches of one optimizer step share it); ``train/on_policy`` logs 1 on
    student-generated steps.

    ``teacher_cache`` (``"auto"`` or a directory, :mod:`kdlight.training.lm_cache`): the teacher's
    top-``teacher_cache_k`` log-probabilities of every training sequence are computed once when
    ``fit`` starts (after the teacher checks and any checkpoint restore, on the teacher's device,
    by rank 0 while the other ranks wait) and read back by the batch's ``index``; the loss is then the top-k forward KL
    (plus next-token CE), other objectives are refused. Validation and generated batches still
    run the teacher.
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
        lmbda: float = 0.0,
        seq_kd: bool = False,
        generation: GenerationSettings | None = None,
        generation_seed: int | None = None,
        teacher_cache: str | None = None,
        teacher_cache_k: int = 64,
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
        self.policy = OnPolicy.build(lmbda, seq_kd, generation, generation_seed)
        if isinstance(self.hparams.get("generation"), GenerationSettings):  # weights-only checkpoints hold plain dicts
            self.hparams["generation"] = asdict(generation)
        self.topk = None if teacher_cache is None else CachedTeacher(str(teacher_cache), teacher_cache_k)
        self.per_position: dict[str, dict[str, Tensor]] = {}

    def lm_network(self) -> nn.Module:
        return self.student

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
        if self.policy is not None:
            self.policy.check(self._text, self.teacher, self.student)
        for split in ("val", "test"):
            metrics = {
                "student_ppl": Perplexity(ignore_index=IGNORE_INDEX),
                "teacher_ppl": Perplexity(ignore_index=IGNORE_INDEX),
                "agreement": MeanMetric(),
                "kl": MeanMetric(),
                "positions": self.position_curves(x, True),
            }
            setattr(self, f"{split}_metrics", nn.ModuleDict(metrics))

    def on_fit_start(self) -> None:
        super().on_fit_start()  # the teacher checks run first: a refused fit builds no cache
        if self.topk is None:
            return
        strategy = self.trainer.strategy
        if self.global_rank == 0:  # one rank builds; the others open what it wrote
            self.topk.open(self)
        strategy.barrier("kdlight_lm_topk_cache")
        if self.global_rank != 0:
            self.topk.open(self)

    # -- steps ---------------------------------------------------------------------------------
    def lm_step(self, x: Tensor, labels: Tensor) -> tuple[DistillStep, list[LossTerm]]:
        """Teacher logits (no grad), student logits and the objective's terms for one batch."""
        return self.distill_step(x, None, labels=labels, attention_mask=x != self.pad_id())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        batch = as_batch(batch)
        x, labels = self.lm_inputs(batch)
        scalars: dict[str, Tensor] = {}
        source = "data"
        if self.policy is not None:
            x, labels, source = self.policy.batch(self, x, labels)
            scalars["train/on_policy"] = torch.tensor(float(source == "student"), device=x.device)
        if self.topk is not None and source == "data":
            terms = self.topk.terms(self, x, labels, batch.index)
        else:
            _, terms = self.lm_step(x, labels)
        loss = total_loss(terms)
        scalars = {"train/loss": loss, **{f"train/loss_{t.name}": t.value for t in terms}, **scalars}
        weights = {f"train/weight_{t.name}": t.weight for t in terms if t.scheduled} or None
        self.record_training(scalars, extra=weights)
        return loss

    def _evaluate(self, batch: Any, split: str, batch_idx: int = 0) -> None:
        x, labels = self.lm_inputs(batch)
        s_logits, t_logits = self.student(x), self._validation_teacher(x, split, batch_idx)
        self._student_taps.pop(), self._teacher_taps.pop()
        counted = labels != IGNORE_INDEX
        ce = next_token_ce(s_logits, labels, reduction="none")
        kl = forward_kl(s_logits, t_logits, labels=labels, reduction="none")
        agree = s_logits.argmax(-1) == t_logits.argmax(-1)
        metrics = getattr(self, f"{split}_metrics")
        metrics["positions"].update(counted, ce, kl, agree)
        tokens = int(counted.sum())
        if tokens == 0:  # a batch of padding only: nothing to score
            return
        metrics["student_ppl"].update(s_logits.float(), labels)
        metrics["teacher_ppl"].update(t_logits.float(), labels)
        metrics["agreement"].update(agree[counted].float().mean(), weight=tokens)
        metrics["kl"].update(kl.sum() / tokens, weight=tokens)
        self.log(f"{split}/loss", ce.sum() / tokens, on_epoch=True, sync_dist=True, batch_size=tokens)
        self.log(f"{split}/student_ppl", metrics["student_ppl"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/teacher_ppl", metrics["teacher_ppl"], on_epoch=True)
        self.log(f"{split}/agreement", metrics["agreement"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/kl", metrics["kl"], on_epoch=True)


def check_causal_logits(ids: Tensor, logits: Tensor, role: str) -> None:
    """``logits`` are next-token logits ``[B, T, V]`` for ids ``[B, T]`` (one line naming ``role`` otherwise)."""
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
        raise ValueError(
            f"{role} returned logits {list(logits.shape)} for ids {list(ids.shape)}; a causal LM must return "
            "next-token logits [B, T, V] (use kdlight.training.ClassifierModule/DistillationModule for classifiers)"
        )


def check_lm_logits(ids: Tensor, teacher_logits: Tensor, student_logits: Tensor) -> None:
    """Both models return next-token logits ``[B, T, V]`` for ids ``[B, T]``, with one vocabulary."""
    check_causal_logits(ids, teacher_logits, "teacher")
    check_causal_logits(ids, student_logits, "student")
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(
            f"teacher predicts over {teacher_logits.shape[-1]} tokens but student over {student_logits.shape[-1]}; "
            "build both with the data's tokenizer (the same vocab_size)"
        )
