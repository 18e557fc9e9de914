"""Teacher-output cache: same training, fewer teacher passes, never stale."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, seed_everything
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


class HalfShardSampler(torch.utils.data.Sampler[int]):
    """A new random half of the samples every epoch, like one of two DDP ranks."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, epoch: int) -> list[int]:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch))[: self.size // 2].tolist()

    def __iter__(self):
        return iter(self.shard(self.epoch))

    def __len__(self) -> int:
        return self.size // 2


class HalfShardDigits(DigitsDataModule):
    def train_dataloader(self):
        loader = super().train_dataloader()
        self.sampler = HalfShardSampler(len(loader.dataset))
        return DataLoader(loader.dataset, batch_size=64, sampler=self.sampler)


def test_cache_fills_sample_by_sample_when_every_epoch_sees_another_shard():
    """Under DDP a rank sees a new shard each epoch: only the samples not cached yet go through the
    teacher, and every cached output equals the teacher's own output for that sample."""
    seed_everything(0, verbose=False)
    data = HalfShardDigits(batch_size=64)
    teacher = digits_teacher()
    rows = []
    module = DistillationModule(teacher, digits_student(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
                                teacher_cache="memory")
    teacher.register_forward_hook(lambda _m, inputs, _o: rows.append(len(inputs[0])))
    tiny_trainer(max_epochs=3, limit_val_batches=0).fit(module, datamodule=data)
    seen = [set(data.sampler.shard(epoch)) for epoch in range(3)]
    new_per_epoch = [len(seen[0]), len(seen[1] - seen[0]), len(seen[2] - seen[0] - seen[1])]
    assert rows[0] == 2  # the setup probe
    assert sum(rows[1:]) == sum(new_per_epoch) < 3 * len(seen[0])  # each sample through the teacher once
    cache = module._cache
    cached = cache.valid.nonzero().squeeze(1)
    assert len(cached) == sum(new_per_epoch)
    inputs = data.train_inputs()[cached]
    with torch.no_grad():
        expected = teacher(inputs)
    assert torch.allclose(cache.logits[cached], expected, atol=1e-5)


def _validation_run(**kwargs):
    seed_everything(0, verbose=False)
    teacher = digits_teacher()
    calls = []
    teacher.register_forward_hook(lambda module, *_: calls.append(module.training))
    module = DistillationModule(teacher, digits_student(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **kwargs)
    history = []

    class Record(Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            calls.clear()

        def on_validation_epoch_end(self, trainer, pl_module):
            history.append((len(calls), {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}))

    tiny_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[Record()]).fit(module, datamodule=DigitsDataModule(batch_size=64))
    return history


def test_cache_runs_the_teacher_once_over_the_validation_batches_of_fit():
    plain, cached = _validation_run(), _validation_run(teacher_cache="memory")
    batches = len(DigitsDataModule(batch_size=64).val_dataloader())
    assert [n for n, _ in plain] == [batches] * 3
    assert [n for n, _ in cached] == [batches, 0, 0]
    for (_, a), (_, b) in zip(plain, cached):  # the same validation metrics every epoch
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), (a, b)


def test_validation_cache_recomputes_a_batch_that_changed():
    teacher = digits_teacher()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    module = DistillationModule(teacher, digits_student(), teacher_cache="memory")
    module.trainer = type("T", (), {"state": type("S", (), {"fn": "fit"})()})()  # a fit in progress
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        first = module._validation_teacher(x, "val", 0)
        assert torch.equal(module._validation_teacher(x.clone(), "val", 0), first) and len(calls) == 1  # cached
        order = [1, 0, *range(2, 8)]  # the same samples in another order: recomputed
        assert torch.allclose(module._validation_teacher(x[order], "val", 0), first[order]) and len(calls) == 2
        assert module._validation_teacher(x[:4], "val", 0).shape == (4, 10) and len(calls) == 3  # a shorter batch


def test_validation_fingerprint_sees_flips_and_reorderings():
    from kdlight.module import _batch_fingerprint

    x = torch.randn(6, 1, 8, 8)
    same = _batch_fingerprint(x.clone())
    assert torch.equal(_batch_fingerprint(x), same)
    for changed in (x.flip(-1), x.transpose(-1, -2), x[[1, 0, 2, 3, 4, 5]], x[:5], x + 1e-3):
        assert not torch.equal(_batch_fingerprint(changed), same)
