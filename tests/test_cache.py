"""Teacher-output cache: same training, fewer teacher passes, never stale."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from conftest import digits_student, digits_teacher, tiny_trainer
from kdlight import DistillationModule
from kdlight.data import DigitsDataModule
from kdlight.objectives import KD, Composite, Hint


def fit(datamodule, epochs=3, teacher_state=None, **kwargs):
    seed_everything(0, verbose=False)
    teacher = digits_teacher()
    if teacher_state is not None:
        teacher.load_state_dict(teacher_state)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    module = DistillationModule(teacher, digits_student(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
                                objective=Composite([KD(), Hint("conv2", "conv2")]), **kwargs)
    tiny_trainer(max_epochs=epochs, limit_val_batches=0).fit(module, datamodule=datamodule)
    return module, len(calls)


def test_memory_cache_gives_identical_training_with_one_teacher_pass_per_sample():
    plain, plain_calls = fit(DigitsDataModule(batch_size=64))
    cached, cached_calls = fit(DigitsDataModule(batch_size=64), teacher_cache="memory")
    batches = len(DigitsDataModule(batch_size=64).train_dataloader())
    assert plain_calls == 3 * batches + 1 and cached_calls == batches + 1  # +1: the setup probe
    for (name, a), b in zip(plain.student.state_dict().items(), cached.student.state_dict().values()):
        assert torch.equal(a, b), name


def test_disk_cache_is_reused_and_rebuilt_for_another_teacher(tmp_path):
    _, first = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    assert list(tmp_path.glob("teacher_cache_*_rank0.pt"))
    _, second = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    assert second == 1 and first > 1  # only the setup probe: every target came from disk
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in digits_teacher().state_dict().items()}
    with pytest.warns(UserWarning, match="built for another teacher"):
        _, third = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path), teacher_state=other)
    assert third == first


class AugmentedDigits(DigitsDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.augmented = True


def test_cache_refuses_augmented_data_unless_accepted():
    with pytest.raises(ValueError, match="randomly augmented training data .* stale targets"):
        fit(AugmentedDigits(), epochs=1, teacher_cache="memory")
    fit(AugmentedDigits(), epochs=1, teacher_cache="memory", cache_augmented=True)


class PlainData(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))), batch_size=8)


def test_cache_needs_indexed_batches():
    with pytest.raises(ValueError, match="teacher_cache needs a kdlight data module"):
        fit(PlainData(), epochs=1, teacher_cache="memory")
