"""DistillationModule: a frozen teacher, a trainable student and a configurable objective."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlight.core.batch import Batch, as_batch
from kdlight.core.modality import Text
from kdlight.core.pruned import apply_record, checkpoint_record
from kdlight.core.step import UNLABELED, DistillStep, LossTerm, total_loss
from kdlight.core.weights import checkpoint_sources, load_weights
from kdlight.data.base import teacher_data_overlap
from kdlight.data.text import vocabulary_mismatch
from kdlight.functional.agreement import predictive_kl, top1_agreement
from kdlight.objectives import KD, Objective
from kdlight.training.base import SupervisedBase, classification_metrics, dry_forward
from kdlight.training.taps import FeatureTaps
from kdlight.training.teacher_cache import TeacherCache, data_fingerprint, teacher_fingerprint
from kdlight.training.transforms import BatchTransform


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
    the first view the teacher saw). It also keeps the teacher's logits on the validation batches
    of ``fit``, which are the same every epoch (checked by a fingerprint of each batch).

    Data modules with an unlabeled transfer set yield ``{"labeled": <batch>, "transfer": <batch of
    inputs only>}`` (see :func:`kdlight.core.batch.as_batch`): label terms (CE, DKD) see the labeled
    samples, teacher-matching terms all of them.
    ``batch_transform`` (e.g. :class:`kdlight.training.transforms.MixUp`) augments the whole batch inside
    the step, so teacher and student see the identical view ("function matching"); mixing
    transforms drop the labels.

    The teacher's weights must come from somewhere: ``teacher_checkpoint``, checkpoints its parts
    loaded themselves (``TeacherEnsemble(checkpoints=...)``) or a checkpoint this module is
    restored from; else fit/validate/test refuse to start unless ``teacher_as_given=True`` (a random
    teacher, or one whose weights you set in code). When the teacher's checkpoint records the data
    it was trained on (kdlight writes ``kdlight_data`` into every checkpoint), fit/validate/test
    refuse val/test samples the teacher trained on (another seed or split than the teacher's);
    ``allow_teacher_data_overlap=True`` turns that into a warning.
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
        batch_transform: BatchTransform | None = None,
        teacher_as_given: bool = False,
        allow_teacher_data_overlap: bool = False,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, num_classes)
        self.save_init_args(objects=["teacher", "student", "objective", "optimizer", "lr_scheduler"])
        if teacher is student:
            raise ValueError("teacher and student must be two different module instances")
        if teacher_checkpoint is not None:
            load_weights(teacher, teacher_checkpoint, role="teacher")
        self.teacher_checkpoint = None if teacher_checkpoint is None else str(teacher_checkpoint)
        self.teacher = freeze(teacher)
        self.student = student
        self.objective = objective if objective is not None else KD()
        self.check_finite = check_finite  # checked on logging steps (every log_every_n_steps)
        self.teacher_cache, self.cache_augmented = teacher_cache, cache_augmented
        self._cache: TeacherCache | None = None
        self._val_teacher: dict[int, tuple[Tensor, Tensor]] = {}  # validation batch -> (teacher logits, fingerprint)
        self.batch_transform = batch_transform
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self._feature_shapes: dict[str, Any] | None = None
        self.teacher_as_given, self.allow_teacher_data_overlap = teacher_as_given, allow_teacher_data_overlap
        self._teacher_restored = False  # set when a checkpoint's state_dict restores the teacher
        self._restored_teacher_data: list[dict[str, Any]] | None = None  # that checkpoint's kdlight_teacher_data
        self._text: Text | None = None  # the data's token modality (set at setup): steps mark real tokens

    # -- the teacher stays frozen ------------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()
        return self

    def on_fit_start(self) -> None:
        """Lightning warns about modules in eval mode when training starts; the frozen teacher's
        are meant to be. Silence that warning for exactly the teacher's count, so any other module
        in eval mode (a student's) still shows it."""
        super().on_fit_start()
        self.check_teacher()
        in_eval = [name for name, module in self.named_modules() if not module.training]
        if in_eval and all(name == "teacher" or name.startswith("teacher.") for name in in_eval):
            self._quiet_teacher_warning = warnings.catch_warnings()
            self._quiet_teacher_warning.__enter__()
            warnings.filterwarnings(
                "ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start of training"
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        quiet = self.__dict__.pop("_quiet_teacher_warning", None)
        if quiet is not None:  # the check has run
            quiet.__exit__(None, None, None)

    def on_validation_start(self) -> None:
        super().on_validation_start()
        if self.trainer.state.fn == "validate":  # fit checks once, at on_fit_start
            self.check_teacher()

    def on_test_start(self) -> None:
        super().on_test_start()
        self.check_teacher()

    # -- where the teacher's weights and training data came from ---------------------------------
    def check_teacher(self) -> None:
        """Run before fit/validate/test (after any checkpoint restore): refuse a teacher whose
        weights came from no checkpoint, and val/test samples the teacher was trained on."""
        deferred = self.trainer.strategy.restore_checkpoint_after_setup and self.trainer.ckpt_path is not None
        loaded = self._teacher_restored or deferred or checkpoint_sources(self.teacher) is not None
        if not loaded and not self.teacher_as_given:
            raise ValueError(
                "teacher_checkpoint is not set, so the teacher keeps its initial random weights; set teacher_checkpoint "
                "to the trained teacher's checkpoint (e.g. runs/digits/teacher/best.ckpt), or set teacher_as_given=true "
                "to distil from the teacher as constructed (random, or with weights you loaded in code)"
            )
        vocabulary = vocabulary_mismatch(self.teacher_training_data(), self.training_data_record())
        if vocabulary is not None:
            raise ValueError(vocabulary)
        overlap = teacher_data_overlap(self.teacher_training_data(), self.trainer.datamodule)
        if overlap is None:
            return
        if not self.allow_teacher_data_overlap:
            raise ValueError(
                f"{overlap}; val/test metrics and val/teacher_acc would be inflated: use the teacher's data settings, "
                "or set allow_teacher_data_overlap=true to run anyway"
            )
        rank_zero_warn(
            f"{overlap}; val/test metrics and val/teacher_acc are inflated (allow_teacher_data_overlap=true)"
        )

    def teacher_training_data(self) -> list[dict[str, Any]]:
        """Records of the data the teacher (and its own teachers) trained on, from the restored
        checkpoint or from the teacher's checkpoint files; empty when none recorded it."""
        if self._restored_teacher_data is not None:
            return self._restored_teacher_data
        return [record for source in checkpoint_sources(self.teacher) or [] for record in source["data"]]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.student.parameters()
        yield from self.objective.parameters()

    # -- setup: taps, shape checks, objective parts, metrics -------------------------------------
    def setup(self, stage: str) -> None:
        self._attach_taps()
        if self.teacher_cache is not None and stage == "fit" and self._cache is None:
            self._setup_cache()
        x = self.example_input()
        self.check_text(x, teacher=self.teacher, student=self.student)
        self._text = self.text_modality()
        if self._text is not None and self.batch_transform is not None:
            raise ValueError(
                f"batch_transform ({type(self.batch_transform).__name__}) mixes input values, which token ids cannot be; "
                "drop batch_transform for text data"
            )
        step = self._shape_step(x)
        t_classes, s_classes = step.teacher_logits.shape[-1], step.student_logits.shape[-1]
        if t_classes != s_classes:
            raise ValueError(
                f"teacher outputs {t_classes} classes but student outputs {s_classes}; "
                "give both models the same num_classes"
            )
        self.build_objective(step)
        num_classes = self.resolve_num_classes(step.student_logits)
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

    def build_objective(self, step: DistillStep) -> None:
        """Refuse tapped layers that never ran in the dry ``step``, build the objective's trainable
        parts from its features and record their shapes (checkpoints rebuild from them)."""
        for role, wanted, tapped in (
            ("student", self.objective.student_layers, step.student_features),
            ("teacher", self.objective.teacher_layers, step.teacher_features),
        ):
            silent = [name for name in dict.fromkeys(wanted) if name not in tapped]
            if silent:
                raise ValueError(
                    f"{role} layer(s) {silent} of {type(getattr(self, role)).__name__} never run in its forward, so the "
                    f"objective cannot read their outputs; name layers that forward calls (see print({role}))"
                )
        self.objective.build(step)
        self._feature_shapes = {
            "student": {k: tuple(v.shape) for k, v in step.student_features.items()},
            "teacher": {k: tuple(v.shape) for k, v in step.teacher_features.items()},
        }

    def _setup_cache(self) -> None:
        data = self.datamodule_capabilities()
        if self.batch_transform is not None:
            raise ValueError(
                "teacher_cache cannot be combined with batch_transform (function matching): the teacher must see "
                "each freshly augmented batch online; drop one of the two"
            )
        if data.transfer_dataset() is not None:
            raise ValueError(
                "teacher_cache does not cover transfer sets yet; set transfer_size to null or drop teacher_cache"
            )
        if not (data.indexed_batches and data.has_train_inputs):
            raise ValueError(
                "teacher_cache needs a kdlight data module (kdlight.data.*) whose training batches carry sample "
                "indices; for your own data module set `indexed_batches = True`, give it train_inputs() and yield "
                "{'inputs', 'target', 'index'} batches whose index is the sample's row in train_inputs()"
            )
        if data.augmented and not self.cache_augmented:
            raise ValueError(
                f"teacher_cache with randomly augmented training data ({type(data.datamodule).__name__}) would give "
                "stale targets: every augmented view would get the teacher output of the first view; turn "
                "augmentation off, drop teacher_cache, or set cache_augmented=true to accept that"
            )
        inputs = data.train_inputs()
        # the key covers all that changes the cached content: teacher class and weights, training
        # data, the tapped teacher layers and the precision (autocast changes the outputs' dtype)
        teacher_key = f"{type(self.teacher).__qualname__}-{teacher_fingerprint(self.teacher)}"
        self._cache = TeacherCache(
            size=len(inputs),
            location=self.teacher_cache,
            teacher_key=teacher_key,
            data_key=data_fingerprint(inputs),
            rank=self.global_rank,
            teacher_layers=self.objective.teacher_layers,
            precision=str(self.trainer.precision),
        ).to(self.device)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self._cache is not None:
            self._cache.end_epoch()

    def _attach_taps(self) -> None:
        if self._student_taps is None:
            self._student_taps = FeatureTaps(self.student, self.objective.student_layers, role="student")
            self._teacher_taps = FeatureTaps(self.teacher, self.objective.teacher_layers, role="teacher")

    def _shape_step(self, x: Tensor) -> DistillStep:
        """A dry run of both models on example inputs: the shapes of logits and tapped features."""
        t_logits, s_logits = dry_forward(self.teacher, x), dry_forward(self.student, x)
        return DistillStep(
            inputs=x,
            target=t_logits.argmax(-1),
            student_logits=s_logits,
            teacher_logits=t_logits,
            student_features=self._student_taps.pop(),
            teacher_features=self._teacher_taps.pop(),
            student=self.student,
            teacher=self.teacher,
            attention_mask=None if self._text is None else self._text.valid(x),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["kdlight_feature_shapes"] = self._feature_shapes
        checkpoint["kdlight_teacher_data"] = self.teacher_training_data()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the objective's trainable parts from the saved feature shapes before loading;
        note that the teacher's weights (and the record of its data) come from the checkpoint."""
        super().on_load_checkpoint(checkpoint)
        pruned = checkpoint_record(checkpoint, "student")
        if pruned:  # a structurally pruned student: give the configured one its shapes first
            apply_record(self.student, pruned, source="the checkpoint")
        if any(key.startswith("teacher.") for key in checkpoint.get("state_dict", {})):
            self._teacher_restored = True
            records = checkpoint.get("kdlight_teacher_data")
            self._restored_teacher_data = (
                [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
            )
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
        """The teacher's logits and tapped features: from the cache for the samples it holds,
        from the teacher for the others (which are then cached)."""
        if self._cache is None:
            with torch.no_grad():
                t_logits = self.teacher(x)
            return t_logits, self._teacher_taps.pop()
        if index is None:
            raise ValueError("teacher_cache is on but the training batch carries no sample indices")
        rows = self._cache.missing(index)
        if rows is not None:
            whole = len(rows) == len(x)
            with torch.no_grad():
                t_logits = self.teacher(x if whole else x[rows])
            self._cache.store(index if whole else index[rows], t_logits, self._teacher_taps.pop())
        return self._cache.read(index)

    def distill_step(
        self,
        x: Tensor,
        y: Tensor | None,
        index: Tensor | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[DistillStep, list[LossTerm]]:
        """Teacher (or cache) and student forward passes and the objective's terms for one batch
        (``labels``: next-token targets of a language model; ``attention_mask``: real tokens, by
        default those of the data's text modality)."""
        if attention_mask is None and self._text is not None:
            attention_mask = self._text.valid(x)
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
            attention_mask=attention_mask,
            labels=labels,
        )
        return step, self.objective(step)

    def _validation_teacher(self, x: Tensor, split: str, batch_idx: int) -> Tensor:
        """The teacher's logits on an evaluation batch; with ``teacher_cache`` the validation
        batches of ``fit`` (fixed, like the frozen teacher) go through the teacher once. A cached
        batch is reused only if the batch's fingerprint matches (else it is recomputed)."""
        if self.teacher_cache is None or split != "val" or self.trainer.state.fn != "fit":
            return self.teacher(x)
        fingerprint = _batch_fingerprint(x)
        cached = self._val_teacher.get(batch_idx)
        if cached is not None and cached[1].shape == fingerprint.shape and torch.equal(cached[1], fingerprint):
            return cached[0]
        t_logits = self.teacher(x)
        self._val_teacher[batch_idx] = (t_logits.detach(), fingerprint)
        return t_logits

    def training_inputs(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None, int]:
        """Inputs, labels (``UNLABELED`` for transfer samples), indices and the labeled count of a
        training batch in any form :func:`~kdlight.core.batch.as_batch` reads.

        Labeled samples come first; ``batch_transform`` is applied to the whole batch.
        """
        batch = as_batch(batch)
        self.check_attention_mask(batch)
        x, y, index = batch.inputs, batch.target, batch.index
        n_labeled = len(x) if y is not None else 0
        if batch.transfer is not None:
            x_u = self._transfer_inputs(batch.transfer, x)
            if y is not None:
                y = torch.cat([y, torch.full((len(x_u),), UNLABELED, dtype=y.dtype, device=y.device)])
            x, index = torch.cat([x, x_u]), None
        if self.batch_transform is not None:
            x = self.batch_transform(x)
            if not self.batch_transform.keeps_labels:
                y, n_labeled = None, 0
        return x, y, index, n_labeled

    @staticmethod
    def _transfer_inputs(transfer: Batch, labeled_x: Tensor) -> Tensor:
        if transfer.target is not None:
            raise ValueError(
                "the transfer loader must yield unlabeled inputs only ({'inputs'}, (x,) or a tensor), but its batches "
                "carry targets; drop the labels from the transfer set (labeled data belongs in the labeled stream)"
            )
        x_u = transfer.inputs
        if x_u.shape[1:] != labeled_x.shape[1:]:
            raise ValueError(
                f"transfer inputs have shape {tuple(x_u.shape[1:])} per sample but labeled inputs {tuple(labeled_x.shape[1:])}"
            )
        return x_u

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, index, n_labeled = self.training_inputs(batch)
        step, terms = self.distill_step(x, y, index)
        loss = total_loss(terms)
        scalars = {"train/loss": loss, **{f"train/loss_{t.name}": t.value for t in terms}}
        samples = None
        if n_labeled < len(x):  # say which samples each term saw
            samples = {t.name: n_labeled if t.samples == "labeled" else len(x) for t in terms}
        weights = {f"train/weight_{t.name}": t.weight for t in terms if t.scheduled} or None
        if n_labeled == len(x):
            self.record_training(scalars, step.student_logits, y, samples, weights)
        else:
            labeled = slice(0, n_labeled)
            self.record_training(
                scalars, step.student_logits[labeled], y[labeled] if n_labeled else None, samples, weights
            )
        return loss

    def _evaluate(self, batch, split: str, batch_idx: int = 0) -> None:
        batch = as_batch(batch)
        x, y = batch.inputs, batch.target
        s_logits, t_logits = self.student(x), self._validation_teacher(x, split, batch_idx)
        self._student_taps.pop(), self._teacher_taps.pop()
        metrics = getattr(self, f"{split}_metrics")
        metrics["student"].update(s_logits, y)
        metrics["teacher_acc"].update(t_logits, y)
        metrics["agreement"].update(top1_agreement(s_logits, t_logits))
        metrics["kl"].update(predictive_kl(s_logits, t_logits))
        self.log(f"{split}/loss", F.cross_entropy(s_logits, y), on_epoch=True, sync_dist=True, batch_size=len(x))
        self.log_dict(metrics["student"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/teacher_acc", metrics["teacher_acc"], on_epoch=True)
        self.log(f"{split}/agreement", metrics["agreement"], on_epoch=True, prog_bar=split == "val")
        self.log(f"{split}/kl", metrics["kl"], on_epoch=True)


def _batch_fingerprint(x: Tensor) -> Tensor:
    """Shape plus sums weighted by sample and by feature position: equal for the same samples in
    the same order (a flipped, shifted or reordered batch gives another fingerprint)."""
    flat = x.detach().flatten(1).double()
    samples = torch.arange(1, flat.shape[0] + 1, device=x.device, dtype=torch.float64)
    features = torch.arange(1, flat.shape[1] + 1, device=x.device, dtype=torch.float64) / flat.shape[1]
    per_sample = torch.stack([flat.sum(1), flat @ features, flat.square().sum(1)], dim=1)
    return torch.cat([torch.tensor(x.shape, dtype=torch.float64, device=x.device), samples @ per_sample])
