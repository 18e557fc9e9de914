"""Pieces shared by :class:`ClassifierModule` and :class:`DistillationModule`."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from kdlight.core.batch import Batch, as_batch
from kdlight.core.datamodule import DataCapabilities, data_capabilities
from kdlight.core.errors import check_finite_loss
from kdlight.core.modality import Text
from kdlight.core.rng import rng_state, set_rng_state
from kdlight.models.outputs import logits_of, return_logits
from kdlight.training.fast_log import skip_redundant_result_moves

try:  # set by LightningCLI while it instantiates the model: the config with class paths
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover - older/newer Lightning
    _given_hyperparameters = None


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """Deprecated: ``as_batch(batch)`` (:mod:`kdlight.core.batch`) gives the named fields.
    ``(inputs, target)`` of the (labeled part of the) batch."""
    warnings.warn(
        "unpack_batch is deprecated; use kdlight.core.batch.as_batch(batch).inputs / .target",
        DeprecationWarning,
        stacklevel=2,
    )
    batch = as_batch(batch)
    return batch.inputs, batch.target


def unpack_indexed_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Deprecated: ``as_batch(batch)`` (:mod:`kdlight.core.batch`) gives the named fields.
    ``(inputs, target, index)`` of the (labeled part of the) batch."""
    warnings.warn(
        "unpack_indexed_batch is deprecated; use kdlight.core.batch.as_batch(batch).inputs / .target / .index",
        DeprecationWarning,
        stacklevel=2,
    )
    batch = as_batch(batch)
    return batch.inputs, batch.target, batch.index


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy and macro-F1 of a classifier, named ``{prefix}acc`` and ``{prefix}f1``."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


def confusion_counts(target: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    """``[C, C]`` counts, rows the target class and columns the prediction, as a float32 product of
    one-hot matrices (exact below 2**24 per batch). ``torch.bincount`` would read its input's
    maximum back to the host: one GPU sync per training step."""
    classes = torch.arange(num_classes, device=target.device)
    return (target[:, None] == classes).T.float() @ (predicted[:, None] == classes).float()


def accuracy_and_macro_f1(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """Accuracy and macro-F1 from a confusion matrix ``[true, predicted]``; macro-F1 averages
    over the classes that occur as a label or a prediction."""
    tp = confusion.diag().float()
    support, predicted = confusion.sum(1).float(), confusion.sum(0).float()
    accuracy = tp.sum() / confusion.sum().clamp(min=1)
    present = (support + predicted) > 0
    f1 = (2 * tp / (support + predicted).clamp(min=1))[present]
    return accuracy, (f1.mean() if len(f1) else torch.zeros((), device=confusion.device))


@dataclass
class TrainingLog:
    """Training scalars of the current epoch, accumulated on the device.

    A step only appends its stacked scalars and its predictions to ``pending``; they are folded
    into the sums and the confusion matrix on logging steps and at the end of the epoch (the
    sums equal step-by-step adds up to float32 rounding; the counts are exact).
    """

    names: list[str] = field(default_factory=list)
    sums: Tensor | None = None  # per-name sums over the epoch
    window: Tensor | None = None  # per-name sums since the last finite check
    window_start: int = 0
    steps: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    confusion: Tensor | None = None  # [true, predicted] counts of labeled samples
    pending: list[Tensor] = field(default_factory=list)  # stacked scalars of steps not yet in the sums
    pending_target: list[Tensor] = field(default_factory=list)  # labels and predictions not yet counted
    pending_predicted: list[Tensor] = field(default_factory=list)
    num_classes: int = 0


#: attributes Lightning sets around every hook call (tens per step); plain values, never parameters,
#: submodules or buffers, so ``nn.Module.__setattr__``'s checks (about 2 us each) can be skipped
PLAIN_LIGHTNING_ATTRIBUTES = frozenset({"_current_fx_name"})


class SupervisedBase(LightningModule):
    """Optimizer/scheduler injection, hyperparameter saving, example inputs, cheap training logs.

    Training scalars are summed on the device and written every ``log_every_n_steps`` steps
    (``train/<name>``) and as epoch means (``train/<name>_epoch``); train accuracy and macro-F1
    come from a confusion matrix at the end of the epoch. That keeps Lightning's per-call logging
    cost (about half a millisecond per ``self.log``) off most steps.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        lr_scheduler_interval: str,
        num_classes: int | None,
    ) -> None:
        super().__init__()
        skip_redundant_result_moves()  # self.log without Lightning's per-call deep copy (fast_log.py)
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"lr_scheduler_interval must be 'epoch' or 'step', got {lr_scheduler_interval!r}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.num_classes = num_classes
        self.check_finite = True
        self._mask_checked = False
        self._reset_training_log()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PLAIN_LIGHTNING_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- cheap training logs -----------------------------------------------------------------
    def _reset_training_log(self) -> None:
        # a plain object: nn.Module attribute assignment costs microseconds per field and step
        previous = self.__dict__.get("_train_log")
        self._train_log = TrainingLog(window_start=previous.window_start if previous is not None else 0)

    def record_training(
        self,
        scalars: dict[str, Tensor],
        logits: Tensor | None = None,
        target: Tensor | None = None,
        samples: dict[str, int] | None = None,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Accumulate this step's scalars; write them on logging steps (and check they are finite)."""
        with torch.no_grad():
            values = torch.stack(list(scalars.values())).float()
            predicted = logits.argmax(-1) if logits is not None and target is not None and len(target) else None
        names = list(scalars)
        log = self._train_log
        if names != log.names:  # first step of the epoch, or the objective's terms changed
            if log.sums is not None:
                self._flush_epoch()
                log = self._train_log
            log.names, log.sums, log.window = names, torch.zeros_like(values), torch.zeros_like(values)
        log.pending.append(values)
        log.steps += 1
        if predicted is not None:
            log.pending_target.append(target)
            log.pending_predicted.append(predicted)
            log.num_classes = logits.shape[-1]
        for name, count in (samples or {}).items():
            log.samples[name] = log.samples.get(name, 0) + count
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self._check_window(last_step=self.global_step)
            for name, value in zip(names, values):
                self.log(name, value, on_step=True, on_epoch=False, prog_bar=name == "train/loss")
            for name, value in (extra or {}).items():
                self.log(name, float(value), on_step=True, on_epoch=False)

    def _fold_pending(self) -> None:
        """Add the pending steps to the sums, the finite-check window and the confusion matrix."""
        log = self._train_log
        if log.pending:
            with torch.no_grad():
                window = torch.stack(log.pending).sum(0)
                log.sums, log.window = log.sums + window, log.window + window
            log.pending.clear()
        if log.pending_target:
            target, predicted = torch.cat(log.pending_target), torch.cat(log.pending_predicted)
            counts = confusion_counts(target, predicted, log.num_classes).double()
            log.confusion = counts if log.confusion is None else log.confusion.add_(counts)
            log.pending_target.clear()
            log.pending_predicted.clear()

    def _check_window(self, last_step: int) -> None:
        """Check the sums of steps ``window_start..last_step`` (one host sync) and start a new window."""
        self._fold_pending()
        log = self._train_log
        if self.check_finite and log.window is not None:
            sums = dict(zip(log.names, log.window))
            terms = {n.removeprefix("train/loss_"): v for n, v in sums.items() if n.startswith("train/loss_")}
            terms = terms or {n.removeprefix("train/"): v for n, v in sums.items()}
            check_finite_loss(terms, self.current_epoch, last_step, since=log.window_start)
            log.window = torch.zeros_like(log.window)
            log.window_start = last_step + 1

    def _flush_epoch(self) -> None:
        log = self._train_log
        if log.sums is None or log.steps == 0:
            return
        self._check_window(last_step=self.global_step - 1)  # the current step is not in the sums
        means = log.sums / log.steps
        epoch = {f"{name}_epoch": value for name, value in zip(log.names, means)}
        if log.confusion is not None:
            confusion = self.trainer.strategy.reduce(log.confusion, reduce_op="sum")
            epoch["train/acc"], epoch["train/f1"] = accuracy_and_macro_f1(confusion)
        # one call: the loss means are averaged over ranks, accuracy/F1 come from the summed confusion
        self.log_dict(epoch, on_step=False, on_epoch=True, sync_dist=self.trainer.world_size > 1)
        for name, count in log.samples.items():
            self.log(f"train/samples_{name}", float(count), on_step=False, on_epoch=True, reduce_fx="sum")
        self._reset_training_log()

    def on_train_start(self) -> None:
        self._train_log.window_start = self.global_step  # a resumed fit starts at its checkpoint's step
        state = self.__dict__.pop("_resumed_rng_state", None)
        if state is not None and self.trainer.world_size == 1:
            set_rng_state(state)  # dropout and augmentation draw on as in an uninterrupted run

    # -- random state in checkpoints ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the RNG states: Lightning saves none, so dropout draws after a resume would differ.
        Under DDP only rank zero's state is saved, and a resumed multi-process fit re-seeds instead.

        Also stores ``kdlight_data``, the record of the data module (``data_record()``: class,
        split-defining arguments, split fingerprints, hashes of the training samples), so a
        student distilled from this checkpoint can check that it does not evaluate on them."""
        checkpoint["kdlight_rng_state"] = rng_state()
        record = self.training_data_record()
        if record is not None:
            checkpoint["kdlight_data"] = record

    def training_data_record(self) -> dict[str, Any] | None:
        """The attached data module's ``data_record()``; None without one (e.g. plain loaders)."""
        return self.datamodule_capabilities().data_record()

    def datamodule_capabilities(self) -> DataCapabilities:
        """What the trainer's data module provides (everything ``None`` when there is none)."""
        return data_capabilities(self._trainer.datamodule if self._trainer is not None else None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied at on_train_start: the sanity check and data set-up in between draw too
        self._resumed_rng_state = checkpoint.get("kdlight_rng_state")

    def on_train_epoch_end(self) -> None:
        self._flush_epoch()

    # -- evaluation, shared by both modules ---------------------------------------------------
    def _evaluate(self, batch: Any, split: str, batch_idx: int = 0) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities of the trained network (``forward``)."""
        return self(as_batch(batch).inputs).softmax(-1)

    def save_init_args(self, objects: list[str]) -> None:
        """Save the init arguments; under LightningCLI the class-path config (so
        ``load_from_checkpoint`` can rebuild the models), otherwise all but the ``objects``."""
        frame = inspect.currentframe().f_back  # the subclass's __init__
        if _given_hyperparameters is not None and _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
        else:
            self.save_hyperparameters(ignore=objects, frame=frame)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:  # pragma: no cover - abstract
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": self.lr_scheduler_interval, "monitor": "val/loss"}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def example_input(self) -> Tensor:
        """A small real input batch from the datamodule, on the device the weights are on now.

        (During ``setup`` Lightning already reports the target device as ``self.device`` while the
        weights are still on the CPU.)"""
        data = self.datamodule_capabilities()
        if data.datamodule is None:
            raise ValueError(
                "kdlight modules need a datamodule (trainer.fit(model, datamodule=...)) to read input shapes"
            )
        x = data.example_input(2)
        weights = next(self.parameters(), None)
        return x.to(weights.device if weights is not None else self.device)

    def text_modality(self) -> Text | None:
        """The data module's :class:`~kdlight.core.modality.Text` modality; ``None`` for other inputs."""
        modality = self.datamodule_capabilities().modality
        return modality if isinstance(modality, Text) else None

    def check_text(self, x: Tensor, **models: nn.Module) -> None:
        """For token inputs: the models share the data's vocabulary, padding id and length, and the
        example ids are ids of that vocabulary (one-line errors); nothing for other inputs."""
        text = self.text_modality()
        if text is None:
            return
        from kdlight.models.text_checks import check_text_models

        text.check_ids(x)
        check_text_models(text, **models)

    def check_attention_mask(self, batch: Batch) -> None:
        """The first batch's ``attention_mask`` (when it has one) agrees with the padding of its ids."""
        if self._mask_checked or batch.attention_mask is None:
            return
        text = self.text_modality()
        if text is not None:
            text.check_ids(batch.inputs, batch.attention_mask)
        self._mask_checked = True

    def resolve_num_classes(self, logits: Tensor) -> int:
        """The class count: given explicitly, else read off the logits of the dry run at setup."""
        found = int(logits.shape[-1])
        if self.num_classes is not None and self.num_classes != found:
            raise ValueError(f"num_classes={self.num_classes} but the model outputs {found} logits")
        expected = self.datamodule_capabilities().num_classes
        if expected is not None and expected != found:
            raise ValueError(
                f"the data have {expected} classes but the model outputs {found} logits; set num_classes={expected} on the model"
            )
        self.num_classes = found
        return found


@torch.no_grad()
def dry_forward(model: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` in eval mode without gradients, restoring its mode (e.g. to read
    output shapes at setup). A model that returns a ``ModelOutput``, a dict or a tuple gets a
    forward hook that returns its logits (:func:`~kdlight.models.outputs.return_logits`), so every
    later caller sees a tensor; models that return tensors stay on the unhooked call path."""
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    finally:
        model.train(was_training)
    if isinstance(out, Tensor):
        return out
    return_logits(model)
    return logits_of(out)
