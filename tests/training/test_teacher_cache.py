"""Teacher-output cache: same training, fewer teacher passes, never stale."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from kdlight import DistillationModule
from kdlight.data import DigitsDataModule
from kdlight.objectives import KD, Composite, Hint
from kdlight.training.teacher_cache import TeacherCache, _host

from conftest import digits_student, digits_teacher, tiny_trainer


def fit(datamodule, epochs=3, teacher_state=None, objective=None, **kwargs):
    seed_everything(0, verbose=False)
    teacher = digits_teacher()
    if teacher_state is not None:
        teacher.load_state_dict(teacher_state)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    objective = objective if objective is not None else Composite([KD(), Hint("conv2", "conv2")])
    module = DistillationModule(
        teacher,
        digits_student(),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        objective=objective,
        teacher_as_given=True,
        **kwargs,
    )
    tiny_trainer(max_epochs=epochs, limit_val_batches=0).fit(module, datamodule=datamodule)
    return module, len(calls)


def test_memory_cache_gives_identical_training_with_one_teacher_pass_per_sample():
    plain, plain_calls = fit(DigitsDataModule(batch_size=64))
    cached, cached_calls = fit(DigitsDataModule(batch_size=64), teacher_cache="memory")
    batches = len(DigitsDataModule(batch_size=64).train_dataloader())
    assert plain_calls == 3 * batches + 1 and cached_calls == batches + 1  # +1: the dry run at setup
    for (name, a), b in zip(plain.student.state_dict().items(), cached.student.state_dict().values()):
        assert torch.equal(a, b), name


def test_disk_cache_is_reused_and_rebuilt_for_another_teacher(tmp_path):
    _, first = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    assert list(tmp_path.glob("teacher_cache_*_rank0.pt"))
    _, second = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    assert second == 1 and first > 1  # only the dry run at setup: every target came from disk
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
        return DataLoader(loader.dataset, batch_size=64, sampler=self.sampler, collate_fn=loader.collate_fn)


def served_teacher_outputs(module, index) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int]]:
    """What ``module`` hands its objective as the teacher's outputs for the training samples ``index``,
    and the batch sizes of the teacher passes that took (none when the cache held them all)."""
    rows = []
    handle = module.teacher.register_forward_hook(lambda _m, inputs, _o: rows.append(len(inputs[0])))
    with torch.no_grad():
        logits, features = module.teacher_outputs(DigitsDataModule().train_inputs()[index], torch.as_tensor(index))
    handle.remove()
    return logits, features, rows


def test_cache_fills_sample_by_sample_when_every_epoch_sees_another_shard():
    """Under DDP a rank sees a new shard each epoch: only the samples not cached yet go through the
    teacher, and every cached output equals the teacher's own output for that sample."""
    seed_everything(0, verbose=False)
    data = HalfShardDigits(batch_size=64)
    teacher = digits_teacher()
    rows = []
    module = DistillationModule(
        teacher,
        digits_student(),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        teacher_cache="memory",
        teacher_as_given=True,
    )
    teacher.register_forward_hook(lambda _m, inputs, _o: rows.append(len(inputs[0])))
    tiny_trainer(max_epochs=3, limit_val_batches=0).fit(module, datamodule=data)
    seen = [set(data.sampler.shard(epoch)) for epoch in range(3)]
    new_per_epoch = [len(seen[0]), len(seen[1] - seen[0]), len(seen[2] - seen[0] - seen[1])]
    assert rows[0] == 2  # the dry run at setup
    assert sum(rows[1:]) == sum(new_per_epoch) < 3 * len(seen[0])  # each sample through the teacher once
    cached = sorted(set().union(*seen))
    logits, _, passes = served_teacher_outputs(module, cached)
    with torch.no_grad():
        expected = teacher(data.train_inputs()[cached])
    assert passes == [] and torch.allclose(logits, expected, atol=1e-5)  # all cached, and the teacher's own
    unseen = next(i for i in range(len(data.train_inputs())) if i not in set(cached))
    assert served_teacher_outputs(module, [unseen])[2] == [1]  # a sample no epoch saw goes through the teacher


def _validation_run(**kwargs):
    seed_everything(0, verbose=False)
    teacher = digits_teacher()
    calls = []
    teacher.register_forward_hook(lambda module, *_: calls.append(module.training))
    module = DistillationModule(
        teacher, digits_student(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), teacher_as_given=True, **kwargs
    )
    history = []

    class Record(Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            calls.clear()

        def on_validation_epoch_end(self, trainer, pl_module):
            history.append(
                (len(calls), {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
            )

    tiny_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[Record()]).fit(
        module, datamodule=DigitsDataModule(batch_size=64)
    )
    return history


def test_cache_runs_the_teacher_once_over_the_validation_batches_of_fit():
    plain, cached = _validation_run(), _validation_run(teacher_cache="memory")
    batches = len(DigitsDataModule(batch_size=64).val_dataloader())
    assert [n for n, _ in plain] == [batches] * 3
    assert [n for n, _ in cached] == [batches, 0, 0]
    for (_, a), (_, b) in zip(plain, cached):  # the same validation metrics every epoch
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), (a, b)


class ChangingValidation(DigitsDataModule):
    """Validation data that change from epoch to epoch (loaders reloaded every epoch), each change on
    top of the last: epoch 1 repeats epoch 0, then the first batch is reordered, flipped, transposed,
    shifted by 1e-3, and finally the last batch loses a sample."""

    CHANGES = [
        lambda x, y: (x, y),
        lambda x, y: (x, y),
        lambda x, y: (x[[1, 0, *range(2, len(x))]], y[[1, 0, *range(2, len(y))]]),
        lambda x, y: (torch.cat([x[:64].flip(-1), x[64:]]), y),
        lambda x, y: (torch.cat([x[:64].transpose(-1, -2), x[64:]]), y),
        lambda x, y: (torch.cat([x[:64] + 1e-3, x[64:]]), y),
        lambda x, y: (x[:-1], y[:-1]),
    ]

    def __init__(self) -> None:
        super().__init__(batch_size=64)
        self.loads, self.current = 0, None

    def val_dataloader(self):
        self.current = self.CHANGES[min(self.loads, len(self.CHANGES) - 1)](
            *(self.current or self.split_tensors("val"))
        )
        self.loads += 1
        return DataLoader(TensorDataset(*self.current), batch_size=64)


def _changing_validation_run(**kwargs):
    seed_everything(0, verbose=False)
    teacher = digits_teacher()
    calls = []
    teacher.register_forward_hook(lambda module, *_: calls.append(1))
    module = DistillationModule(
        teacher, digits_student(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), teacher_as_given=True, **kwargs
    )
    history = []

    class Record(Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            calls.clear()

        def on_validation_epoch_end(self, trainer, pl_module):
            history.append(
                (
                    len(calls),
                    float(trainer.callback_metrics["val/teacher_acc"]),
                    float(trainer.callback_metrics["val/kl"]),
                )
            )

    trainer = tiny_trainer(
        max_epochs=len(ChangingValidation.CHANGES),
        num_sanity_val_steps=0,
        limit_train_batches=1,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[Record()],
    )
    trainer.fit(module, datamodule=ChangingValidation())
    return history


def test_validation_cache_recomputes_every_batch_that_changed():
    """Reordered, flipped, transposed, shifted or shortened batches go through the teacher again;
    the metrics equal those of a run without the cache every epoch."""
    plain, cached = _changing_validation_run(), _changing_validation_run(teacher_cache="memory")
    batches = len(DigitsDataModule(batch_size=64).val_dataloader())
    assert [n for n, *_ in plain] == [batches] * 7
    assert [n for n, *_ in cached] == [batches, 0, 1, 1, 1, 1, 1]
    for (_, *a), (_, *b) in zip(plain, cached):
        assert a == pytest.approx(b, abs=1e-6)


# -- the disk copy: atomic writes, unreadable files, the full key, leftovers of killed writers ----
def _teacher_outputs(module, layer):
    """The teacher's own logits and ``layer`` output on every training sample."""
    captured = {}
    handle = module.teacher.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.update(out=out))
    with torch.no_grad():
        logits = module.teacher(DigitsDataModule().train_inputs())
    handle.remove()
    return logits, captured["out"]


def _all_served(module):
    """The teacher outputs ``module`` serves for every training sample; every one must come from the cache."""
    logits, features, passes = served_teacher_outputs(module, list(range(len(DigitsDataModule().train_inputs()))))
    assert passes == []
    return logits, features


def _cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "teacher cache" in str(w.message)]


def test_unreadable_cache_file_is_rebuilt_with_one_warning(tmp_path):
    fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    (path,) = tmp_path.glob("teacher_cache_*_rank0.pt")
    path.write_bytes(b"garbage, not a torch file")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        module, calls = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    (message,) = _cache_warnings(record)
    assert message.startswith(f"teacher cache {path} is unreadable (") and message.endswith(
        "rebuilding it from the teacher"
    )
    assert "\n" not in message and calls > 1
    logits, _ = _teacher_outputs(module, "conv2")
    assert torch.allclose(_all_served(module)[0], logits, atol=1e-5)  # rebuilt from the teacher, not from garbage
    with warnings.catch_warnings(record=True) as record:  # rewritten: the next run reads it quietly
        warnings.simplefilter("always")
        _, calls = fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path))
    assert not _cache_warnings(record) and calls == 1


def _filled_cache(location, size=4, layers=("conv2",), precision="32-true") -> TeacherCache:
    cache = TeacherCache(size, str(location), "teacher", "data", teacher_layers=layers, precision=precision)
    cache.store(torch.arange(size), torch.randn(size, 3), {name: torch.randn(size, 2) for name in layers})
    return cache


@pytest.mark.parametrize("damage", ["truncated", "foreign", "wrong_shape"])
def test_truncated_or_foreign_cache_file_is_deleted_and_rebuilt(tmp_path, damage):
    _filled_cache(tmp_path).end_epoch()
    (path,) = tmp_path.glob("teacher_cache_*.pt")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "foreign":  # e.g. the layout of an older kdlight
        torch.save({"teacher": "teacher", "size": 4, "valid": torch.ones(4, dtype=torch.bool)}, path)
    else:
        other = _filled_cache(tmp_path / "other", size=5)
        other.size = other.key["size"] = 4  # right key, entries of 5 samples
        other.end_epoch()
        path.write_bytes((tmp_path / "other" / path.name).read_bytes())
    with pytest.warns(
        UserWarning, match=r"teacher cache .* is unreadable \(.*\); deleting it and rebuilding it"
    ) as record:
        cache = TeacherCache(4, str(tmp_path), "teacher", "data", teacher_layers=["conv2"])
    assert len(_cache_warnings(record)) == 1 and not cache.complete and not path.exists()


def test_cache_key_covers_the_tapped_teacher_layers(tmp_path):
    """Hint on conv1, then Hint on conv2 over the same cache directory: the second run must not
    reuse the conv1 features, and gets the teacher's own conv2 features."""
    fit(DigitsDataModule(), epochs=1, teacher_cache=str(tmp_path), objective=Composite([KD(), Hint("conv1", "conv1")]))
    with pytest.warns(
        UserWarning, match=r"built for other tapped teacher layers \(\['conv1'\] vs \['conv2'\]\); rebuilding it"
    ):
        module, calls = fit(
            DigitsDataModule(),
            epochs=1,
            teacher_cache=str(tmp_path),
            objective=Composite([KD(), Hint("conv2", "conv2")]),
        )
    served_logits, served_features = _all_served(module)
    assert calls > 1 and set(served_features) == {"conv2"}
    logits, conv2 = _teacher_outputs(module, "conv2")
    assert torch.allclose(served_features["conv2"], conv2, atol=1e-5)
    assert torch.allclose(served_logits, logits, atol=1e-5)


def test_cache_key_covers_precision_and_layers(tmp_path):
    _filled_cache(tmp_path, layers=("conv1", "conv2")).end_epoch()
    assert TeacherCache(
        4, str(tmp_path), "teacher", "data", teacher_layers=["conv2", "conv1", "conv2"]
    ).complete  # order-free
    with pytest.warns(UserWarning, match=r"built for another precision \(32-true vs bf16-mixed\); rebuilding it"):
        assert not TeacherCache(
            4, str(tmp_path), "teacher", "data", teacher_layers=["conv1", "conv2"], precision="bf16-mixed"
        ).complete


def test_interrupted_write_leaves_no_half_written_cache(tmp_path, monkeypatch):
    """The cache is written to a temp file in the same directory and renamed into place."""
    targets = []

    def killed_save(obj, target):
        targets.append(Path(target))
        Path(target).write_bytes(b"PK half a file")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", killed_save)
    cache = _filled_cache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.end_epoch()
    (target,) = targets
    assert target.parent == cache.path.parent and target != cache.path
    assert not cache.path.exists() and list(tmp_path.iterdir()) == []  # no entry, no leftover
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing half-written to warn about
        assert not TeacherCache(4, str(tmp_path), "teacher", "data", teacher_layers=["conv2"]).complete


def test_leftover_temp_files_of_killed_writers_are_removed_at_start(tmp_path):
    _filled_cache(tmp_path).end_epoch()
    (path,) = tmp_path.glob("teacher_cache_*.pt")
    dead = path.with_name(f"{path.name}.tmp-{_host()}-2147483647")  # no such process
    live = path.with_name(f"{path.name}.tmp-{_host()}-{os.getpid()}")  # a writer still at work
    remote = path.with_name(f"{path.name}.tmp-otherhost-123")  # another machine's writer, recent
    stale = tmp_path / "teacher_cache_other_rank1.pt.tmp-otherhost-456"  # untouched for two hours
    for leftover in (dead, live, remote, stale):
        leftover.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cache = TeacherCache(4, str(tmp_path), "teacher", "data", teacher_layers=["conv2"])
    assert cache.complete  # the real file was read, the leftovers never
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, remote.name])
