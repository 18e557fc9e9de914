"""The finite-loss guard: a NaN loss term stops training with one line naming the term and steps."""

from __future__ import annotations

import pytest
import torch

from kdlight import DistillationModule
from kdlight.core.errors import NonFiniteLossError, check_finite_loss
from kdlight.core.step import LossTerm
from kdlight.objectives import KD

from conftest import digits_student, digits_teacher, tiny_trainer


class NaNAfter(KD):
    """KD whose ``kd`` term turns NaN from global step ``start`` on."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start

    def forward(self, step):
        terms = super().forward(step)
        if step.global_step >= self.start:
            terms = [t if t.name != "kd" else LossTerm("kd", t.value * float("nan"), t.weight) for t in terms]
        return terms


def _fit(digits, start: int, every: int, check_finite: bool = True, epochs: int = 1):
    module = DistillationModule(
        digits_teacher(),
        digits_student(),
        objective=NaNAfter(start),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        check_finite=check_finite,
        teacher_as_given=True,
    )
    trainer = tiny_trainer(max_epochs=epochs, log_every_n_steps=every, limit_val_batches=0)
    trainer.fit(module, datamodule=digits)
    return trainer


def test_nan_between_logging_steps_is_caught_at_the_next_one(digits):
    with pytest.raises(
        NonFiniteLossError, match=r"loss term (ce=nan, )?kd=nan at epoch 0, steps 5-9: training stopped; lower"
    ):
        _fit(digits, start=7, every=5)


def test_nan_in_the_last_steps_of_an_epoch_is_caught_at_its_end(digits):
    # digits: 19 training steps (0-18) per epoch and no logging step before 100: only the
    # epoch-end flush checks them
    with pytest.raises(NonFiniteLossError, match=r"kd=nan at epoch 0, steps 0-18: training stopped"):
        _fit(digits, start=17, every=100)


def test_check_finite_false_lets_training_go_on(digits):
    trainer = _fit(digits, start=3, every=5, check_finite=False)
    assert torch.isnan(trainer.callback_metrics["train/loss_kd_epoch"])


def test_check_finite_loss_names_every_bad_term():
    terms = {"ce": torch.tensor(1.0), "kd": torch.tensor(float("inf")), "at": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLossError, match=r"loss term kd=inf, at=nan at epoch 2, step 40"):
        check_finite_loss(terms, epoch=2, step=40)
    check_finite_loss({"ce": torch.tensor(0.5)}, epoch=0, step=0)  # finite: no error


def test_after_a_resume_the_reported_steps_start_at_the_checkpoint(digits, tmp_path):
    def module():
        return DistillationModule(
            digits_teacher(),
            digits_student(),
            objective=NaNAfter(25),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
            teacher_as_given=True,
        )

    first = tiny_trainer(max_epochs=1, log_every_n_steps=100, limit_val_batches=0)
    first.fit(module(), datamodule=digits)  # steps 0-18, all finite
    first.save_checkpoint(tmp_path / "epoch0.ckpt")
    resumed = tiny_trainer(max_epochs=2, log_every_n_steps=100, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match=r"kd=nan at epoch 1, steps 19-37: training stopped"):
        resumed.fit(module(), datamodule=digits, ckpt_path=tmp_path / "epoch0.ckpt")
