"""kdlight.training.base: training-log arithmetic, batch forms, dry runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, seed_everything
from sklearn.metrics import confusion_matrix, f1_score
from torch.utils.data import DataLoader, TensorDataset, default_collate

from kdlight import ClassifierModule
from kdlight.core.batch import Batch
from kdlight.models import MLP
from kdlight.training.base import (
    accuracy_and_macro_f1,
    confusion_counts,
    dry_forward,
    unpack_batch,
    unpack_indexed_batch,
)

from conftest import tiny_trainer


def test_confusion_counts_match_sklearn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 7, (500,), generator=g)
    predicted = torch.where(torch.rand(500, generator=g) < 0.6, target, torch.randint(0, 7, (500,), generator=g))
    counts = confusion_counts(target, predicted, num_classes=7)
    expected = confusion_matrix(target.numpy(), predicted.numpy(), labels=list(range(7)))
    assert counts.dtype == torch.float32 and np.array_equal(counts.numpy(), expected)
    accuracy, f1 = accuracy_and_macro_f1(counts.double())
    assert abs(float(accuracy) - float((target == predicted).double().mean())) < 1e-7
    assert abs(float(f1) - f1_score(target.numpy(), predicted.numpy(), average="macro")) < 1e-6


def test_confusion_counts_leave_absent_classes_empty():
    counts = confusion_counts(torch.tensor([0, 0, 2]), torch.tensor([0, 2, 2]), num_classes=4)
    assert counts.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


# -- batches of any accepted form, dry runs, the deprecated tuple readers ---------------------------
X, Y = torch.randn(48, 6), torch.arange(48) % 3


class UserData(LightningDataModule):
    """A user's data module whose loaders yield ``form`` batches: positional tuples, the old
    ``{"x", "y"}`` dicts or :class:`Batch` objects."""

    COLLATE = {
        "tuple": default_collate,
        "xy dict": lambda samples: dict(zip(("x", "y"), default_collate(samples))),
        "Batch": lambda samples: Batch(*default_collate(samples)),
    }

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def train_dataloader(self):
        return DataLoader(TensorDataset(X, Y), batch_size=16, collate_fn=self.COLLATE[self.form])

    val_dataloader = train_dataloader


@pytest.mark.parametrize("form", sorted(UserData.COLLATE))
def test_every_batch_form_trains_and_validates_alike(form):
    seed_everything(0, verbose=False)
    module = ClassifierModule(
        MLP(in_features=6, num_classes=3, hidden=[8]), optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    trainer = tiny_trainer(max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Lightning's "ambiguous collection" batch size
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=UserData(form))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(module.model.eval()(X), Y)
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_dry_forward_runs_in_eval_mode_without_gradients_and_restores_the_mode():
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Dropout(0.5)).train()
    out = dry_forward(model, X)
    assert model.training and not out.requires_grad
    assert torch.equal(out, model[0](X).detach())  # dropout was off


def test_deprecated_unpack_batch_still_returns_the_old_tuples():
    x_u = torch.randn(4, 6)
    with pytest.warns(DeprecationWarning, match="as_batch"):
        assert unpack_batch((X, Y)) == (X, Y)
    with pytest.warns(DeprecationWarning, match="as_batch"):
        x, y, index = unpack_indexed_batch({"labeled": {"inputs": X, "target": Y, "index": Y}, "transfer": (x_u,)})
    assert (x, y, index) == (X, Y, Y)


# -- training logs: folded on logging steps and at the end of the epoch ------------------------------
class StepLosses(Callback):
    """The loss of every training step, as Lightning hands it to ``on_train_batch_end``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_epoch_logs_equal_the_step_losses_and_the_training_predictions(digits):
    """With a frozen model (lr 0) the epoch's accuracy and macro-F1 are those of the model on the
    training split, and the epoch loss is the mean of the step losses, whatever the logging interval."""
    model = MLP(in_features=64, num_classes=10, hidden=[16])
    module = ClassifierModule(model, optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    steps = StepLosses()
    trainer = tiny_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[steps], limit_val_batches=0)
    trainer.fit(module, datamodule=digits)
    x, y = digits.split_tensors("train")
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    metrics = trainer.callback_metrics
    assert len(steps.losses) == 19
    assert float(metrics["train/loss_epoch"]) == pytest.approx(np.mean(steps.losses), rel=1e-6)
    assert float(metrics["train/acc"]) == pytest.approx(float((predicted == y).double().mean()), abs=1e-7)
    assert float(metrics["train/f1"]) == pytest.approx(
        f1_score(y.numpy(), predicted.numpy(), average="macro"), abs=1e-6
    )
    assert float(metrics["train/loss"]) == pytest.approx(steps.losses[15], rel=1e-6)  # the last logging step


def test_training_logs_hold_under_accumulation_clipping_and_bf16(digits):
    """Accumulation (two batches per optimizer step), gradient clipping and bf16-mixed autocast:
    every batch still counts once in the epoch logs, and the optimizer steps once per two batches."""
    module = ClassifierModule(MLP(in_features=64, num_classes=10, hidden=[16]))
    steps = StepLosses()
    trainer = tiny_trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        gradient_clip_val=0.01,
        precision="bf16-mixed",
        log_every_n_steps=2,
        callbacks=[steps],
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=digits)
    assert trainer.global_step == 10 and len(steps.losses) == 19  # ceil(19 / 2) optimizer steps
    # Lightning hands on_train_batch_end the loss divided by the accumulation factor; the logs keep it whole
    assert float(trainer.callback_metrics["train/loss_epoch"]) == pytest.approx(2 * np.mean(steps.losses), rel=1e-3)
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0
