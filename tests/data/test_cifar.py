"""CIFAR files are read with a restricted unpickler: the genuine format loads, planted code never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlight.data import CIFAR10DataModule, CIFAR100DataModule
from kdlight.data.cifar import UnsafePickleError, load_cifar_pickle

N = 10  # images per file


def _batch(rng: np.random.Generator, label_key: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """One file of the official "python version" layout: uint8 rows of 3072 bytes, labels as ints."""
    x = rng.integers(0, 256, size=(N, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=N)
    d = {
        b"batch_label": b"fake batch",
        label_key: y.tolist(),
        b"data": x.reshape(N, -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(N)],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = (y // 5).tolist()
    return d, x, y


def _dump(path: Path, obj, protocol: int, numpy1_names: bool = False) -> None:
    data = pickle.dumps(obj, protocol=protocol)
    if numpy1_names:  # the names the original archives (numpy 1) carry
        assert b"numpy._core.multiarray" in data
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def _fake_cifar10(root: Path, protocol: int, numpy1_names: bool = False) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(protocol)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d, x, y = _batch(rng, b"labels")
        _dump(folder / name, d, protocol, numpy1_names)
        if name != "test_batch":
            xs.append(x), ys.append(y)
    _dump(folder / "batches.meta", {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": N}, protocol)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize(
    "protocol, numpy1_names",
    [(2, False), (2, True), (pickle.DEFAULT_PROTOCOL, False), (5, False)],
    ids=["protocol2", "protocol2-numpy1-names", "default-protocol", "protocol5"],
)
def test_genuine_cifar10_files_load_through_the_data_module(tmp_path, protocol, numpy1_names):
    x, y = _fake_cifar10(tmp_path, protocol, numpy1_names)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=8, num_workers=0, augment=False)
    dm.setup()
    assert dm.split_sizes()["train"] == 5 * N
    assert torch.equal(dm.split_tensors("train")[1], torch.from_numpy(y))
    mean, std = torch.tensor(dm.mean).view(-1, 1, 1), torch.tensor(dm.std).view(-1, 1, 1)
    assert torch.allclose(dm.train_inputs(), (torch.from_numpy(x).float() / 255 - mean) / std, atol=1e-6)
    meta = load_cifar_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta")  # keys stay bytes
    assert meta[b"label_names"][0] == b"airplane" and meta[b"num_cases_per_batch"] == N


def test_genuine_cifar100_file_with_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (train, _, y), (test, *_) = _batch(rng, b"fine_labels"), _batch(rng, b"fine_labels")
    _dump(folder / "train", train, 2)
    _dump(folder / "test", test, pickle.DEFAULT_PROTOCOL)
    dm = CIFAR100DataModule(str(tmp_path), num_workers=0, augment=False)
    dm.setup()
    assert torch.equal(dm.split_tensors("train")[1], torch.from_numpy(y))
    assert load_cifar_pickle(folder / "train")[b"coarse_labels"] == (y // 5).tolist()


class Planted:
    """What a tampered file carries: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_planted_file_is_refused_and_its_code_does_not_run(tmp_path, protocol):
    _fake_cifar10(tmp_path / "data", protocol)
    planted = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    d, *_ = _batch(np.random.default_rng(0), b"labels")
    d[b"labels"] = [Planted(tmp_path / "marker"), *d[b"labels"][1:]]
    _dump(planted, d, protocol)
    with open(planted, "rb") as f:  # the file is a real threat for a plain pickle.load
        pickle.load(f, encoding="bytes")
    assert (tmp_path / "marker").read_text() == "code ran"
    (tmp_path / "marker").unlink()

    dm = CIFAR10DataModule(str(tmp_path / "data"), num_workers=0, augment=False)
    with pytest.raises(
        UnsafePickleError, match=r"refusing to load .*data_batch_3: it references (builtins|__builtin__)\.exec"
    ) as err:
        dm.setup()
    assert not (tmp_path / "marker").exists()  # the planted code never ran
    assert "\n" not in str(err.value) and "kriz/cifar.html" in str(err.value)


def test_only_latin1_codecs_and_intact_files_are_accepted(tmp_path):
    # protocol 0-2 pickles rebuild bytes with _codecs.encode(text, "latin1"); other codecs are refused
    crafted = tmp_path / "crafted"
    crafted.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(
        UnsafePickleError, match=r"refusing to load .*crafted: it calls _codecs.encode with encoding 'rot13'"
    ):
        load_cifar_pickle(crafted)
    truncated = tmp_path / "truncated"
    d, *_ = _batch(np.random.default_rng(0), b"labels")
    truncated.write_bytes(pickle.dumps(d, protocol=2)[:500])
    with pytest.raises(pickle.UnpicklingError, match=r"cannot read .*truncated .*: it is truncated or not a CIFAR"):
        load_cifar_pickle(truncated)
