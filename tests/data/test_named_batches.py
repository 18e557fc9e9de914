"""Named batches serve exactly the tensors the positional ``(x, y[, index])`` batches served.

``fixtures/batch_digests.json`` holds SHA-256 digests (dtype, shape and bytes) of every tensor the
data modules gave out with the code before batches were named (commit 21e6971): the split tensors,
the training stream of two epochs with its sample indices, val/test and the transfer stream.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from kdlight.core.batch import as_batch
from kdlight.data import BreastCancerDataModule, DigitsDataModule, MNIST1DDataModule, ShortcutDigitsDataModule

DIGESTS = json.loads((Path(__file__).parent / "fixtures" / "batch_digests.json").read_text())["digests"]
CASES = {
    "digits": lambda: DigitsDataModule(batch_size=128, seed=3, transfer_size=100),
    "mnist1d": lambda: MNIST1DDataModule(batch_size=256, seed=1, num_samples=1000, transfer_size=100),
    "breast_cancer": lambda: BreastCancerDataModule(batch_size=64, seed=2),
    "shortcut": lambda: ShortcutDigitsDataModule(batch_size=128, seed=4, cue_strength=0.8),
}


def digest(tensor: torch.Tensor) -> str:
    tensor = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stream(loader, field: str) -> torch.Tensor:
    return torch.cat([getattr(as_batch(raw), field) for raw in loader])


def served(dm) -> dict[str, str]:
    """Digests of everything ``dm`` serves, under the fixture's names."""
    out = {"example_input": digest(dm.example_input(2)), "train_inputs": digest(dm.train_inputs())}
    for split in ("train", "val", "test"):
        x, y = dm.split_tensors(split)
        out[f"split_tensors/{split}/inputs"], out[f"split_tensors/{split}/target"] = digest(x), digest(y)
    loaders = dm.train_dataloader()
    train = loaders["labeled"] if isinstance(loaders, dict) else loaders
    for epoch in (0, 1):
        train.sampler.set_epoch(epoch)
        batches = list(train)
        out[f"train/epoch{epoch}/inputs"] = digest(stream(batches, "inputs"))
        out[f"train/epoch{epoch}/target"] = digest(stream(batches, "target"))
    out["train/epoch1/index"] = digest(stream(batches, "index"))
    for split in ("val", "test"):
        batches = list(getattr(dm, f"{split}_dataloader")())
        out[f"{split}/inputs"], out[f"{split}/target"] = (
            digest(stream(batches, "inputs")),
            digest(stream(batches, "target")),
        )
    if isinstance(loaders, dict):
        for epoch in (0, 1):
            loaders["transfer"].sampler.set_epoch(epoch)
            out[f"transfer/epoch{epoch}/inputs"] = digest(stream(loaders["transfer"], "inputs"))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_batches_are_bit_identical_to_the_positional_ones(name):
    got, expected = served(CASES[name]()), DIGESTS[name]
    assert got.keys() == expected.keys()
    changed = [key for key in expected if got[key] != expected[key]]
    assert not changed, f"{name}: these tensors changed: {changed}"
