"""DistillationModule: a frozen teacher, a trainable student and a configurable objective."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlight.base import SupervisedBase, classification_metrics, probe, unpack_batch, unpack_indexed_batch
from kdlight.cache import TeacherCache, data_fingerprint, teacher_fingerprint
from kdlight.checkpoint import load_weights
from kdlight.errors import check_finite_loss
from kdlight.functional.agreement import predictive_kl, top1_agreement
from kdlight.objectives import KD, Objective
from kdlight.step import DistillStep, LossTerm, total_loss
from kdlight.taps import FeatureTaps


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode."""
    model.requires_grad_(False)
    return model.eval()


class DistillationModule(SupervisedBase):
    """Distil ``teacher`` into ``student`` with ``objective`` (default: Hinton KD, T=4, alpha=0.9).

    The teacher is frozen: no gradients, eval mode at all times (also after ``train()``), never in
    the optimizer. The optimizer sees the student's parameters plus the objective's trainable
    parts (hint regressors). Validation/test log student accuracy and macro-F1, teacher accuracy,
    top-1 agreement and predictive KL(teacher || student).

    ``teacher_cache`` (``"memory"`` or a directory) computes the teacher's logits and tapped
    features once per training sample and reuses them every epoch; it refuses randomly augmented
    training data unless ``cache_augmented=True`` (then every view of a sample gets the targets of
    the first view the teacher saw).
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
        num_classes: int | None = None,
        check_finite: bool = True,
        teacher_cache: str | None = None,
        cache_augmented: bool = False,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, num_classes)
        self.save_init_args(objects=["teacher", "student", "objective", "optimizer", "lr_scheduler"])
        if teacher is student:
            raise ValueError("teacher and student must be two different module instances")
        if teacher_checkpoint is not None:
            load_weights(teacher, teacher_checkpoint, role="teacher")
        self.teacher = freeze(teacher)
        self.student = student
        self.objective = objective if objective is not None else KD()
        self.check_finite = check_finite
        self.teacher_cache, self.cache_augmented = teacher_cache, cache_augmented
        self._cache: TeacherCache | None = None
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self._feature_shapes: dict[str, Any] | None = None

    # -- the teacher stays frozen ------------------------------------------------------------
    def train(self, mode: bool = True) -> "DistillationModule":
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.student.parameters()
        yield from self.objective.parameters()

    # -- setup: taps, shape checks, objective parts, metrics -------------------------------------
    def setup(self, stage: str) -> None:
        self._attach_taps()
        if self.teacher_cache is not None and stage == "fit" and self._cache is None:
            self._setup_cache()
        x = self.example_input()
        step = self._probe_step(x)
        t_classes, s_classes = step.teacher_logits.shape[-1], step.student_logits.shape[-1]
        if t_classes != s_classes:
            raise ValueError(
                f"teacher outputs {t_classes} classes but student outputs {s_classes}; "
                "give both models the same num_classes"
            )
        self.objective.build(step)
        self._feature_shapes = {
            "student": {k: tuple(v.shape) for k, v in step.student_features.items()},
            "teacher": {k: tuple(v.shape) for k, v in step.teacher_features.items()},
        }
        num_classes = self.resolve_num_classes(step.student_logits)
        self.train_metrics = classification_metrics(num_classes, "train/")
        for split in ("val", "test"):
            metrics = nn.ModuleDict(
                {
                    "student": classification_metrics(num_classes, f"{split}/"),
                    "teacher_acc": MulticlassAccuracy(num_classes, average="micro"),
                    "agreement": MeanMetric(),
                    "kl": MeanMetric(),
                }
            )
            setattr(self, f"{split}_metrics", metrics)

    def _setup_cache(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "return_index"):
            raise ValueError(
                "teacher_cache needs a kdlight data module (kdlight.data.*) whose training batches can carry "
                "sample indices; for your own data module add `return_index` and yield (x, y, index) batches"
            )
        if getattr(datamodule, "augmented", False) and not self.cache_augmented:
            raise ValueError(
                f"teacher_cache with randomly augmented training data ({type(datamodule).__name__}) would give "
                "stale targets: every augmented view would get the teacher output of the first view; turn "
                "augmentation off, drop teacher_cache, or set cache_augmented=true to accept that"
            )
        datamodule.return_index = True
        inputs = datamodule.train_inputs()
        self._cache = TeacherCache(
            size=len(inputs), location=self.teacher_cache, teacher_key=teacher_fingerprint(self.teacher),
            data_key=data_fingerprint(inputs), rank=self.global_rank,
        ).to(self.device)

    def on_train_epoch_end(self) -> None:
        if self._cache is not None:
            self._cache.end_epoch()

    def _attach_taps(self) -> None:
        if self._student_taps is None:
            self._student_taps = FeatureTaps(self.student, self.objective.student_layers, role="student")
            self._teacher_taps = FeatureTaps(self.teacher, self.objective.teacher_layers, role="teacher")

    def _probe_step(self, x: Tensor) -> DistillStep:
        t_logits, s_logits = probe(self.teacher, x), probe(self.student, x)
        return DistillStep(
            inputs=x,
            target=t_logits.argmax(-1),
            student_logits=s_logits,
            teacher_logits=t_logits,
            student_features=self._student_taps.pop(),
            teacher_features=self._teacher_taps.pop(),
            student=self.student,
            teacher=self.teacher,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kdlight_feature_shapes"] = self._feature_shapes

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the objective's trainable parts from the saved feature shapes before loading."""
        shapes = checkpoint.get("kdlight_feature_shapes")
        if not shapes:
            return
        fake = DistillStep(
            inputs=torch.empty(0),
            target=None,
            student_logits=torch.empty(0),
            teacher_logits=torch.empty(0),
            student_features={k: torch.empty(s) for k, s in shapes["student"].items()},
            teacher_features={k: torch.empty(s) for k, s in shapes["teacher"].items()},
        )
        self.objective.build(fake)
        self._feature_shapes = shapes

    # -- steps ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def teacher_outputs(self, x: Tensor, index: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The teacher's logits and tapped features: from the cache when it has them."""
        if self._cache is not None:
            if index is None:
                raise ValueError("teacher_cache is on but the training batch carries no sample indices")
            cached = self._cache.lookup(index)
            if cached is not None:
                return cached
        with torch.no_grad():
            t_logits = self.teacher(x)
        t_features = self._teacher_taps.pop()
        if self._cache is not None:
            self._cache.store(index, t_logits, t_features)
        return t_logits, t_features

    def distill_step(self, x: Tensor, y: Tensor | None, index: Tensor | None = None) -> tuple[DistillStep, list[LossTerm]]:
        """Teacher (or cache) and student forward passes and the objective's terms for one batch."""
        t_logits, t_features = self.teacher_outputs(x, index)
        s_logits = self.student(x)
        step = DistillStep(
            inputs=x,
            target=y,
            student_logits=s_logits,
            teacher_logits=t_logits,
            student_features=self._student_taps.pop(),
            teacher_features=t_features,
            epoch=self.current_epoch,
            global_step=self.global_step,
            student=self.student if self.objective.needs_models else None,
            teacher=self.teacher if self.objective.needs_models else None,
        )
        return step, self.objective(step)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, index = unpack_indexed_batch(batch)
        step, terms = self.distill_step(x, y, index)
        loss = total_loss(terms)
        if self.check_finite:
            check_finite_loss({t.name: t.value for t in terms}, self.current_epoch, self.global_step)
        for term in terms:
            self.log(f"train/loss_{term.name}", term.value.detach(), on_step=True, on_epoch=True)
            if term.scheduled:
                self.log(f"train/weight_{term.name}", term.weight, on_step=True, on_epoch=False)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True)
        if y is not None:
            self.train_metrics.update(step.student_logits.detach(), y)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, split: str) -> None:
        x, y = unpack_batch(batch)
        s_logits, t_logits = self.student(x), self.teacher(x)
        self._student_taps.pop(), self._teacher_taps.pop()
        metrics = getattr(self, f"{split}_metrics")
        metrics["student"].update(s_logits, y)
        metrics["teacher_acc"].update(t_logits, y)
        metrics["agreement"].update(top1_agreement(s_logits, t_logits))
        metrics["kl"].update(predictive_kl(s_logits, t_logits))
        self.log(f"{split}/loss", F.cross_entropy(s_logits, y), on_epoch=True)
        self.log_dict(metrics["student"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/teacher_acc", metrics["teacher_acc"], on_epoch=True)
        self.log(f"{split}/agreement", metrics["agreement"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/kl", metrics["kl"], on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        x, _ = unpack_batch(batch)
        return self.student(x).softmax(-1)
