"""Unlabeled transfer sets and function matching (teacher and student see the same view)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from kdlight import DistillationModule
from kdlight.core.step import UNLABELED, DistillStep
from kdlight.data import DigitsDataModule, MNIST1DDataModule
from kdlight.functional.distillation import dkd_loss
from kdlight.objectives import DKD, KD, CrossEntropy
from kdlight.training.transforms import Compose, CutMix, MixUp, RandomShift

from conftest import digits_student, digits_teacher, tiny_trainer


def adam(p):
    return torch.optim.Adam(p, lr=3e-3)


def test_mnist1d_transfer_set_is_new_unlabeled_data():
    dm = MNIST1DDataModule(transfer_size=500, transfer_seed=7)
    transfer = dm.transfer_dataset()
    assert len(transfer) == 500 and len(transfer[0]) == 1 and transfer[0][0].shape == (1, 40)
    x_u = torch.stack([transfer[i][0] for i in range(500)])
    x_train = dm.train_inputs()
    assert torch.cdist(x_u.flatten(1), x_train.flatten(1)).min() > 0  # not copies of labeled samples
    with pytest.raises(ValueError, match="transfer_size must be a positive number"):
        MNIST1DDataModule(transfer_size=0)
    with pytest.raises(ValueError, match="transfer_seed must differ from data_seed"):
        MNIST1DDataModule(transfer_size=10, transfer_seed=42)


def test_digits_transfer_views_are_deterministic_and_valid():
    dm = DigitsDataModule(transfer_size=64)
    views = dm.transfer_dataset()
    assert torch.equal(views[3][0], DigitsDataModule(transfer_size=64).transfer_dataset()[3][0])
    x = torch.stack([views[i][0] for i in range(64)])
    assert x.shape == (64, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    with pytest.raises(
        ValueError, match=r"unknown transfer augmentation\(s\) \['rotate'\]; valid ones are: shift, noise, mixup"
    ):
        DigitsDataModule(transfer_size=8, transfer_augmentations=["rotate"]).transfer_dataset()


def mixed_step() -> DistillStep:
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([1, 0, 2, UNLABELED, UNLABELED, UNLABELED])
    return DistillStep(
        inputs=torch.zeros(6, 2),
        target=target,
        student_logits=torch.randn(6, 3, generator=g),
        teacher_logits=torch.randn(6, 3, generator=g),
    )


def test_label_terms_see_only_labeled_samples_and_say_so():
    step = mixed_step()
    (ce,) = CrossEntropy()(step)
    assert ce.samples == "labeled" and torch.allclose(
        ce.value, F.cross_entropy(step.student_logits[:3], step.target[:3])
    )
    terms = {t.name: t for t in DKD(warmup_epochs=0)(step)}
    expected = dkd_loss(step.student_logits[:3], step.teacher_logits[:3], step.target[:3])
    assert terms["dkd"].samples == "labeled" and torch.allclose(terms["dkd"].value, expected)
    assert {t.name: t.samples for t in KD()(step)} == {"ce": "labeled", "kd": "all"}


def test_distillation_with_a_transfer_set_logs_what_each_term_saw():
    dm = DigitsDataModule(batch_size=32, transfer_size=96)
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=KD(), optimizer=adam, teacher_as_given=True
    )
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    assert m["train/samples_ce"].item() == 3 * 32 and m["train/samples_kd"].item() == 3 * 64


class BadTransfer(LightningDataModule):
    def __init__(self, transfer):
        super().__init__()
        self.transfer = transfer
        self.labeled = TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)))

    def train_dataloader(self):
        return {"labeled": DataLoader(self.labeled, batch_size=8), "transfer": DataLoader(self.transfer, batch_size=8)}

    def val_dataloader(self):
        return DataLoader(self.labeled, batch_size=8)


@pytest.mark.parametrize(
    "transfer,message",
    [
        (TensorDataset(torch.rand(16, 1, 8, 8), torch.zeros(16, dtype=torch.long)), "must yield unlabeled inputs only"),
        (
            TensorDataset(torch.rand(16, 1, 4, 4)),
            r"transfer inputs have shape \(1, 4, 4\) per sample but labeled inputs \(1, 8, 8\)",
        ),
    ],
)
def test_bad_transfer_loaders_are_clear_errors(transfer, message):
    module = DistillationModule(digits_teacher(), digits_student(), optimizer=adam, teacher_as_given=True)
    with pytest.raises(ValueError, match=message):
        tiny_trainer(max_steps=1).fit(module, datamodule=BadTransfer(transfer))


def test_function_matching_feeds_teacher_and_student_the_same_mixed_view():
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    teacher, student = digits_teacher(), digits_student()
    teacher.register_forward_pre_hook(
        lambda m, a: seen["teacher"].append(a[0].clone()) if torch.is_grad_enabled() is False else None
    )
    student.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].clone()) if m.training else None)
    module = DistillationModule(
        teacher, student, objective=KD(), batch_transform=MixUp(alpha=1.0), optimizer=adam, teacher_as_given=True
    )
    dm = DigitsDataModule(batch_size=16)
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    student_views = seen["student"]
    teacher_views = [t for t in seen["teacher"] if any(t.shape == s.shape and torch.equal(t, s) for s in student_views)]
    assert len(student_views) == 2 and len(teacher_views) == 2
    x_train = dm.train_inputs().flatten(1)
    assert torch.cdist(student_views[0].flatten(1), x_train).min(1).values.max() > 0  # mixtures, not raw images
    assert "train/loss_ce" not in trainer.callback_metrics  # mixed inputs carry no labels


def test_function_matching_or_transfer_refuse_the_cache():
    with pytest.raises(ValueError, match="cannot be combined with batch_transform"):
        module = DistillationModule(
            digits_teacher(), digits_student(), batch_transform=MixUp(), teacher_cache="memory", teacher_as_given=True
        )
        tiny_trainer(max_steps=1).fit(module, datamodule=DigitsDataModule())
    with pytest.raises(ValueError, match="does not cover transfer sets"):
        module = DistillationModule(digits_teacher(), digits_student(), teacher_cache="memory", teacher_as_given=True)
        tiny_trainer(max_steps=1).fit(module, datamodule=DigitsDataModule(transfer_size=32))


def test_batch_transforms():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 6, 6)
    x[..., 0, :] = x[..., -1, :] = 0
    x[..., :, 0] = x[..., :, -1] = 0
    shifted = RandomShift(max_shift=1)(x)
    assert shifted.shape == x.shape and torch.allclose(shifted.sum(), x.sum())  # zero border: nothing falls off
    mixed = MixUp(alpha=0.5)(x)
    assert mixed.shape == x.shape and mixed.min() >= 0 and mixed.max() <= x.max()
    cut = CutMix(alpha=1.0)(torch.rand(4, 1, 40))
    assert cut.shape == (4, 1, 40)
    assert Compose([RandomShift(), MixUp()]).keeps_labels is False and RandomShift().keeps_labels
    with pytest.raises(ValueError, match="alpha .* must be > 0"):
        MixUp(alpha=0)
    with pytest.raises(ValueError, match="CutMix needs"):
        CutMix()(torch.rand(4, 30))
