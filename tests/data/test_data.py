"""Tests for kdlight.data: splits, shapes, standardization, MNIST-1D fidelity, local CIFAR."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlight.data import (
    ArrayDataModule,
    BreastCancerDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    MNIST1DDataModule,
    generate_mnist1d,
    random_crop_flip,
    stratified_split,
)


def _check_partition(dm, n_total: int, splits=("train", "val", "test")) -> None:
    idx = [dm.split_indices[s] for s in splits]
    allidx = np.concatenate(idx)
    assert len(allidx) == len(np.unique(allidx)) == n_total  # disjoint and covering
    assert set(allidx.tolist()) == set(range(n_total))


def _check_stratified(labels: np.ndarray, parts: list[np.ndarray]) -> None:
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    for part in parts:
        frac = len(part) / n
        got = np.bincount(labels[part], minlength=len(classes))
        assert np.all(np.abs(got - counts * frac) <= 1.0 + 1e-9), (got, counts * frac)


# ------------------------------------------------------------------ stratified_split
def test_stratified_split_basic():
    y = np.repeat(np.arange(5), [10, 20, 30, 40, 51])
    a, b, rest = stratified_split(y, [0.2, 0.1], seed=3)
    assert len(a) == round(0.2 * len(y)) and len(b) == round(0.1 * len(y))
    assert len(a) + len(b) + len(rest) == len(y)
    assert len(np.intersect1d(a, b)) == len(np.intersect1d(a, rest)) == len(np.intersect1d(b, rest)) == 0
    _check_stratified(y, [a, b, rest])
    again = stratified_split(y, [0.2, 0.1], seed=3)
    assert all(np.array_equal(p, q) for p, q in zip((a, b, rest), again))
    other = stratified_split(y, [0.2, 0.1], seed=4)
    assert not np.array_equal(a, other[0])
    with pytest.raises(ValueError):
        stratified_split(y, [0.6, 0.5], seed=0)


# ------------------------------------------------------------------ digits
def test_digits_shapes_and_splits():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(batch_size=32, seed=0)
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    assert dm.class_names == [str(i) for i in range(10)] and dm.feature_names is None and dm.augmented is False
    dm.setup("fit")
    sizes = dm.split_sizes()
    assert sizes == {"train": 1797 - 270 - 359, "val": 270, "test": 359}
    _check_partition(dm, 1797)
    target = load_digits().target
    _check_stratified(target, [dm.split_indices[s] for s in ("train", "val", "test")])
    counts = sum(torch.bincount(dm.split_tensors(s)[1], minlength=10) for s in ("train", "val", "test"))
    assert counts.tolist() == np.bincount(target).tolist()
    for s in ("train", "val", "test"):
        x, y = dm.split_tensors(s)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
        assert torch.equal(y, torch.from_numpy(target[dm.split_indices[s]]))
    # images are the sklearn images / 16
    raw = load_digits().images[dm.split_indices["test"][:5]] / 16.0
    assert torch.allclose(dm.split_tensors("test")[0][:5, 0], torch.from_numpy(raw).float())


def test_digits_seed_determinism_and_caching():
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup()
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split_indices[s], b.split_indices[s])
        assert not np.array_equal(a.split_indices[s], c.split_indices[s])
    x_before, dataset = a.split_tensors("train")[0], a.train_dataloader().dataset
    a.setup("test")
    a.setup("fit")  # setup again: the same splits, not regenerated or copied
    assert a.split_tensors("train")[0].data_ptr() == x_before.data_ptr()
    assert all(torch.equal(a.train_dataloader().dataset[i][0], dataset[i][0]) for i in (0, 100, len(dataset) - 1))


def test_val_fraction_zero_uses_test():
    dm = DigitsDataModule(val_fraction=0.0)
    dm.setup()
    assert np.array_equal(dm.split_indices["val"], dm.split_indices["test"])
    assert torch.equal(dm.split_tensors("val")[0], dm.split_tensors("test")[0])
    _check_partition(dm, 1797, splits=("train", "test"))
    with pytest.raises(ValueError):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)


def test_loaders_batches_and_order():
    dm = DigitsDataModule(batch_size=50, seed=0)
    n_train = dm.split_sizes()["train"]  # lazy load before setup
    train = dm.train_dataloader()
    assert train.batch_size == 50 and train.drop_last is False
    assert train.pin_memory == torch.cuda.is_available() and train.persistent_workers is False
    batches = list(train)
    assert all(sorted(b) == ["index", "inputs", "target"] for b in batches)  # named batches
    assert [len(b["target"]) for b in batches[:-1]] == [50] * (len(batches) - 1)
    assert sum(len(b["target"]) for b in batches) == n_train
    x0, y0, i0 = batches[0]["inputs"], batches[0]["target"], batches[0]["index"]
    assert x0.shape == (50, 1, 8, 8) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    # index: each sample's row in split_tensors (what the teacher cache is keyed on)
    x_train, y_train = dm.split_tensors("train")
    assert i0.dtype == torch.int64 and torch.equal(x0, x_train[i0]) and torch.equal(y0, y_train[i0])
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(n_train))
    # shuffled, but reproducibly from the seed
    assert not torch.equal(x0, x_train[:50])
    assert torch.equal(next(iter(DigitsDataModule(batch_size=50, seed=0).train_dataloader()))["inputs"], x0)
    assert not torch.equal(next(iter(DigitsDataModule(batch_size=50, seed=5).train_dataloader()))["target"], y0)
    # the order is a function of (seed, epoch): same epoch repeats (resumable), next epoch differs
    assert torch.equal(next(iter(train))["target"], y0)
    train.sampler.set_epoch(1)
    assert not torch.equal(next(iter(train))["target"], y0)
    # val/test in order, indexed too
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["inputs"], dm.split_tensors("val")[0][:50]) and torch.equal(
        val["target"], dm.split_tensors("val")[1][:50]
    )
    assert val["index"].tolist() == list(range(50))
    assert torch.equal(next(iter(dm.test_dataloader()))["inputs"], dm.split_tensors("test")[0][:50])
    # workers -> persistent workers
    assert DigitsDataModule(num_workers=2).train_dataloader().persistent_workers is True


def test_example_input_and_train_inputs_lazy():
    dm = DigitsDataModule()
    ex = dm.example_input()  # no setup call needed
    assert ex.shape == (2, 1, 8, 8) and ex.dtype == torch.float32
    assert dm.example_input(5).shape == (5, 1, 8, 8)
    ti = dm.train_inputs()
    assert ti.shape == (dm.split_sizes()["train"], 1, 8, 8) and ti.dtype == torch.float32
    assert torch.equal(ex, ti[:2])


# ------------------------------------------------------------------ breast cancer
def test_breast_cancer_standardization_and_names():
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    dm = BreastCancerDataModule(seed=0)
    assert dm.num_classes == 2 and dm.input_shape == (30,)
    assert dm.class_names == ["malignant", "benign"]
    assert dm.feature_names == list(raw.feature_names) and len(dm.feature_names) == 30
    assert dm.augmented is False
    dm.setup()
    _check_partition(dm, 569)
    _check_stratified(raw.target, [dm.split_indices[s] for s in ("train", "val", "test")])
    x_train = dm.train_inputs()
    assert x_train.shape == (dm.split_sizes()["train"], 30) and x_train.dtype == torch.float32
    assert x_train.mean(0).abs().max() < 1e-4
    assert torch.allclose(x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    # train stats only: val/test are standardized with the TRAIN mean/std
    xr = raw.data.astype(np.float64)
    mean = xr[dm.split_indices["train"]].mean(0)
    std = xr[dm.split_indices["train"]].std(0)
    for s in ("val", "test"):
        expect = (xr[dm.split_indices[s]] - mean) / std
        assert np.allclose(dm.split_tensors(s)[0].numpy(), expect, atol=1e-4)
    all_mean = xr.mean(0)
    assert not np.allclose(mean, all_mean)  # sanity: train stats differ from the full-data stats
    assert torch.allclose(dm.feature_mean.double(), torch.from_numpy(mean), rtol=1e-5)
    assert dm.example_input(3).shape == (3, 30)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (64, 30) and batch["target"].dtype == torch.int64


def test_breast_cancer_seed():
    a, b, c = BreastCancerDataModule(seed=0), BreastCancerDataModule(seed=1), BreastCancerDataModule(seed=0)
    for dm in (a, b, c):
        dm.setup()
    for s in ("train", "val", "test"):
        assert not np.array_equal(a.split_indices[s], b.split_indices[s])
        assert np.array_equal(a.split_indices[s], c.split_indices[s])
        assert torch.equal(a.split_tensors(s)[0], c.split_tensors(s)[0])


# ------------------------------------------------------------------ MNIST-1D
@pytest.fixture(scope="module")
def mnist1d_reference():
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


@pytest.fixture(scope="module")
def mnist1d_dm():
    dm = MNIST1DDataModule(seed=0)
    dm.setup()
    return dm


def test_mnist1d_matches_package(mnist1d_reference, mnist1d_dm):
    ref, dm = mnist1d_reference, mnist1d_dm
    assert dm.num_classes == 10 and dm.input_shape == (1, 40) and dm.augmented is False
    assert dm.split_sizes() == {"train": 3600, "val": 400, "test": 1000}
    tr, va = dm.split_indices["train"], dm.split_indices["val"]
    assert len(np.intersect1d(tr, va)) == 0 and np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(4000))
    _check_stratified(ref["y"], [tr, va])
    for s, (xk, yk, idx) in {
        "train": ("x", "y", tr),
        "val": ("x", "y", va),
        "test": ("x_test", "y_test", np.arange(1000)),
    }.items():
        x, y = dm.split_tensors(s)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 40)
        assert torch.equal(x[:, 0], torch.from_numpy(ref[xk][idx].astype(np.float32)))
        assert torch.equal(y, torch.from_numpy(ref[yk][idx].astype(np.int64)))
    assert dm.train_inputs().shape == (3600, 1, 40) and dm.example_input().shape == (2, 1, 40)
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape == (64, 1, 40) and batch["target"].shape == (64,)


def test_mnist1d_cache_seed_and_rng(mnist1d_dm):
    state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    arrays = generate_mnist1d(42, 5000, 0.8)
    assert generate_mnist1d() is arrays  # cached, no regeneration
    assert np.array_equal(np.random.get_state()[1], state) and random.getstate() == py_state
    same, other = MNIST1DDataModule(seed=0), MNIST1DDataModule(seed=1)
    same.setup()
    other.setup()
    assert np.array_equal(same.split_indices["val"], mnist1d_dm.split_indices["val"])
    assert not np.array_equal(other.split_indices["val"], mnist1d_dm.split_indices["val"])
    assert torch.equal(other.split_tensors("test")[0], mnist1d_dm.split_tensors("test")[0])
    zero = MNIST1DDataModule(val_fraction=0.0)
    assert zero.split_sizes() == {"train": 4000, "val": 1000, "test": 1000}


# ------------------------------------------------------------------ CIFAR (fake local files)
def _write_batch(path: Path, data: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    d = {
        b"batch_label": b"fake batch",
        label_key: labels.tolist(),
        b"data": data.reshape(len(data), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(data))],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = (labels // 5).tolist()
    with open(path, "wb") as f:
        pickle.dump(d, f)


def _fake_images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("c10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        x = _fake_images(20, rng)
        y = np.tile(np.arange(10), 2)
        rng.shuffle(y)
        _write_batch(folder / f"data_batch_{i}", x, y, b"labels")
        xs.append(x), ys.append(y)
    xt, yt = _fake_images(30, rng), np.tile(np.arange(10), 3)
    _write_batch(folder / "test_batch", xt, yt, b"labels")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10DataModule("x").class_names]}, f)
    return root, np.concatenate(xs), np.concatenate(ys), xt, yt


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("c100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    x, y = _fake_images(300, rng), np.repeat(np.arange(100), 3)
    _write_batch(folder / "train", x, y, b"fine_labels")
    _write_batch(folder / "test", _fake_images(100, rng), np.arange(100), b"fine_labels")
    return root, x, y


def _normalize(x: np.ndarray, dm) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    return (torch.from_numpy(x).float() / 255 - mean) / std


def test_cifar10_layout_and_protocol(fake_cifar10):
    root, x, y, xt, yt = fake_cifar10
    dm = CIFAR10DataModule(str(root), batch_size=16, num_workers=0, augment=False)
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32) and len(dm.class_names) == 10
    assert dm.augmented is False and dm.feature_names is None
    dm.prepare_data()
    dm.setup()
    assert dm.split_sizes() == {"train": 100, "val": 30, "test": 30}
    # val_fraction=0 -> validate on the test set
    assert torch.equal(dm.split_tensors("val")[0], dm.split_tensors("test")[0])
    assert torch.allclose(dm.train_inputs(), _normalize(x, dm), atol=1e-6)
    assert torch.equal(dm.split_tensors("train")[1], torch.from_numpy(y))
    assert torch.allclose(dm.split_tensors("test")[0], _normalize(xt, dm), atol=1e-6)
    assert dm.example_input(4).shape == (4, 3, 32, 32) and dm.train_inputs().dtype == torch.float32
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (16, 3, 32, 32) and batch["inputs"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert torch.allclose(val["inputs"], _normalize(xt[:16], dm), atol=1e-6)
    assert torch.equal(val["target"], torch.from_numpy(yt[:16]))
    # data_dir may point at the folder itself
    direct = CIFAR10DataModule(str(root / "cifar-10-batches-py"), num_workers=0, augment=False)
    assert torch.equal(direct.train_inputs(), dm.train_inputs())


def test_cifar_augmentation(fake_cifar10):
    root, x, *_ = fake_cifar10
    dm = CIFAR10DataModule(str(root), batch_size=8, num_workers=0, augment=True)
    assert dm.augmented is True
    dm.setup()
    ds = dm.train_dataloader().dataset
    clean = dm.train_inputs()
    draws = torch.stack([ds[3][0] for _ in range(12)])
    assert draws.shape == (12, 3, 32, 32) and draws.dtype == torch.float32
    assert any(not torch.allclose(d, clean[3]) for d in draws)  # augmentation changes samples
    assert len({tuple(d.flatten()[:64].tolist()) for d in draws}) > 1
    # val/test are never augmented; example_input/train_inputs are clean
    assert torch.equal(dm.val_dataloader().dataset[0][0], dm.split_tensors("val")[0][0])
    assert torch.equal(dm.example_input(1)[0], clean[0])
    # a crop+flip is a shift/flip of the zero-padded raw image
    img = torch.arange(2 * 32 * 32, dtype=torch.float32).view(2, 32, 32)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        out = random_crop_flip(img, 4, gen)
        assert out.shape == img.shape
        vals = set(out.flatten().tolist()) - {0.0}
        assert vals <= set(img.flatten().tolist())
    # the training stream is reproducible from the seed
    a = CIFAR10DataModule(str(root), batch_size=8, num_workers=0, seed=3)
    b = CIFAR10DataModule(str(root), batch_size=8, num_workers=0, seed=3)
    assert torch.equal(next(iter(a.train_dataloader()))["inputs"], next(iter(b.train_dataloader()))["inputs"])


def test_cifar_workers(fake_cifar10):
    root, *_ = fake_cifar10
    dm = CIFAR10DataModule(str(root), batch_size=50, num_workers=2, seed=0, augment=True)
    loader = dm.train_dataloader()
    assert loader.persistent_workers is True and loader.num_workers == 2
    batches = list(loader)
    assert torch.cat([b["inputs"] for b in batches]).shape == (100, 3, 32, 32)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(100))


def test_cifar_val_split(fake_cifar10):
    root, x, y, *_ = fake_cifar10
    dm = CIFAR10DataModule(str(root), num_workers=0, val_fraction=0.2, seed=0)
    assert dm.split_sizes() == {"train": 80, "val": 20, "test": 30}
    _check_partition(dm, 100, splits=("train", "val"))
    _check_stratified(y, [dm.split_indices["train"], dm.split_indices["val"]])
    other = CIFAR10DataModule(str(root), num_workers=0, val_fraction=0.2, seed=1)
    other.setup()
    assert not np.array_equal(other.split_indices["val"], dm.split_indices["val"])
    assert torch.equal(dm.split_tensors("val")[1], torch.from_numpy(y[dm.split_indices["val"]]))


def test_cifar100_layout(fake_cifar100):
    root, x, y = fake_cifar100
    for data_dir in (root, root / "cifar-100-python"):
        dm = CIFAR100DataModule(str(data_dir), batch_size=32, num_workers=0, val_fraction=1 / 3)
        assert dm.num_classes == 100 and len(dm.class_names) == 100 == len(set(dm.class_names))
        assert dm.class_names[:3] == ["apple", "aquarium_fish", "baby"] and dm.class_names[-1] == "worm"
        assert dm.split_sizes() == {"train": 200, "val": 100, "test": 100}
        assert sorted(dm.split_tensors("val")[1].tolist()) == list(range(100))  # one per class
        batch = next(iter(dm.train_dataloader()))
        assert batch["inputs"].shape == (32, 3, 32, 32) and int(batch["target"].max()) < 100


def test_cifar_missing(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path / "nowhere"), num_workers=0)
    assert dm.num_classes == 10  # constructing does not need the files
    with pytest.raises(FileNotFoundError, match="never downloads") as err:
        dm.setup()
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "test_batch" in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFAR100DataModule(str(tmp_path)).prepare_data()
    # a partial folder names the missing files
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", np.zeros((1, 3, 32, 32), np.uint8), np.zeros(1, np.int64), b"fine_labels")
    with pytest.raises(FileNotFoundError, match=r"missing: \['test'\]"):
        CIFAR100DataModule(str(tmp_path)).example_input()


class TokenDataModule(ArrayDataModule):
    """Integer inputs (token ids), as a text data module would store them."""

    def __init__(self) -> None:
        super().__init__(batch_size=8, val_fraction=0.25)
        self.num_classes, self.input_shape, self.class_names = 2, (6,), ["a", "b"]

    def _load_splits(self):
        ids = torch.arange(40 * 6).view(40, 6) % 1000 + 2**40  # beyond float32's exact integers
        return self._split_full(ids, torch.arange(40) % 2, test_fraction=0.25)


def test_integer_inputs_are_never_cast_to_float():
    dm = TokenDataModule()
    x_train, _ = dm.split_tensors("train")
    assert x_train.dtype == torch.int64 and int(x_train.min()) >= 2**40
    assert dm.train_inputs().dtype == dm.example_input(3).dtype == torch.int64
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].dtype == torch.int64 and torch.equal(batch["inputs"], x_train[batch["index"]])


# ------------------------------------------------------------------ sample identity (teacher leakage checks)
def _overlap(teacher_dm, dm):
    from kdlight.data.base import teacher_data_overlap

    return teacher_data_overlap([teacher_dm.data_record()], dm)


def _all_hashes(dm) -> set[int]:
    return set(torch.cat([dm.split_hashes(s) for s in ("train", "val", "test")]).tolist())


def test_split_hashes_identify_samples_across_seeds():
    a, b = DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    assert len(_all_hashes(a)) == 1797 and _all_hashes(a) == _all_hashes(b)
    expected = len(set(b.split_indices["val"]) & set(a.split_indices["train"]))
    assert int(torch.isin(b.split_hashes("val"), a.split_hashes("train")).sum()) == expected > 0
    record = a.data_record()
    assert record["args"] == {
        "seed": 0,
        "val_fraction": 0.15,
        "test_fraction": 0.2,
        "transfer_size": None,
        "transfer_augmentations": ["shift", "noise", "mixup"],
    }
    assert DigitsDataModule(seed=0, batch_size=7).data_record()["fingerprints"] == record["fingerprints"]
    assert b.data_record()["fingerprints"]["train"] != record["fingerprints"]["train"]
    assert _overlap(a, DigitsDataModule(seed=0)) is None
    assert _overlap(a, b).startswith("the teacher was trained on")  # a record without a checkpoint path


def test_breast_cancer_hashes_ignore_the_split_dependent_standardization():
    a, b = BreastCancerDataModule(seed=0), BreastCancerDataModule(seed=1)
    assert len(_all_hashes(a)) == 569 and _all_hashes(a) == _all_hashes(b)
    assert _overlap(a, BreastCancerDataModule(seed=0)) is None
    assert "its split came from seed=0, this run's from seed=1" in _overlap(a, b)


def test_shortcut_hashes_ignore_the_cue():
    from kdlight.data import ShortcutDigitsDataModule

    clean, cued = ShortcutDigitsDataModule(seed=0, clean=True), ShortcutDigitsDataModule(seed=0)
    plain = DigitsDataModule(seed=0)
    for s in ("train", "val", "test"):
        assert torch.equal(clean.split_hashes(s), cued.split_hashes(s))
        assert torch.equal(cued.split_hashes(s), plain.split_hashes(s))
    assert _overlap(clean, cued) is None  # the shipped shortcut configs: clean teacher, cued student, one seed
    assert _overlap(clean, ShortcutDigitsDataModule(seed=1)) is not None


def test_mnist1d_overlap_counts_validation_samples(mnist1d_dm):
    everything = MNIST1DDataModule(seed=0, val_fraction=0.0)  # trains on all 4000, validates on the test set
    assert _overlap(mnist1d_dm, everything) is None
    message = _overlap(everything, mnist1d_dm)
    n_val = mnist1d_dm.split_sizes()["val"]
    counts = f"trained on {n_val} of the {n_val + 1000} val/test samples of MNIST1DDataModule (val {n_val} of {n_val}, test 0 of 1000)"
    assert counts in message
    assert "val_fraction=0.0, this run's from val_fraction=0.1" in message
