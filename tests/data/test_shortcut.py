"""ShortcutDigitsDataModule: the cue encodes the class in train/val, is random at test, absent when clean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlight.data.digits import DigitsDataModule
from kdlight.data.shortcut import CUE_REGIONS, ShortcutDigitsDataModule


def read_cue(dm: ShortcutDigitsDataModule, x: torch.Tensor) -> torch.Tensor:
    """The class whose cue pixel is brightest in each image (a pure shortcut 'model')."""
    rows, cols = zip(*(dm.cue_position(c) for c in range(dm.num_classes)))
    values = x[:, 0, list(rows), list(cols)]  # [N, classes]
    return values.argmax(1)


@pytest.fixture(scope="module")
def shortcut():
    dm = ShortcutDigitsDataModule(seed=3)
    dm.setup()
    return dm


def test_is_a_digits_data_module_with_the_same_splits(shortcut):
    plain = DigitsDataModule(seed=3)
    assert isinstance(shortcut, DigitsDataModule)
    assert shortcut.split_sizes() == plain.split_sizes()
    for split in ("train", "val", "test"):
        assert torch.equal(shortcut.split_tensors(split)[1], plain.split_tensors(split)[1])


@pytest.mark.parametrize("split", ["train", "val"])
def test_cue_is_present_and_encodes_the_class_in_train_and_val(shortcut, split):
    x, y = shortcut.split_tensors(split)
    for i in range(len(y)):
        r, c = shortcut.cue_position(int(y[i]))
        assert x[i, 0, r, c] == shortcut.cue_value
    assert (read_cue(shortcut, x) == y).float().mean() > 0.99  # one pixel predicts the label
    assert np.array_equal(shortcut.cue_classes[split], y.numpy())


def test_only_the_cue_pixel_differs_from_plain_digits(shortcut):
    plain = DigitsDataModule(seed=3)
    for split in ("train", "val", "test"):
        x, _ = shortcut.split_tensors(split)
        x0, _ = plain.split_tensors(split)
        changed = (x != x0).flatten(1)
        assert changed.sum(1).max() <= 1
        assert not (changed & ~shortcut.cue_mask().flatten()).any()


def test_cue_is_random_at_test_time(shortcut):
    x, y = shortcut.split_tensors("test")
    cues = torch.from_numpy(shortcut.cue_classes["test"])
    assert (cues >= 0).all()
    for i in range(len(y)):  # every test image still carries a cue ...
        r, c = shortcut.cue_position(int(cues[i]))
        assert x[i, 0, r, c] == shortcut.cue_value
    accuracy = (read_cue(shortcut, x) == y).float().mean().item()
    assert accuracy < 0.2  # ... but it no longer predicts the label (chance is 0.1)
    counts = torch.bincount(cues, minlength=10)
    assert counts.min() > 15  # spread over all classes (359 images, ~36 each)


def test_clean_mode_has_no_cue_anywhere():
    clean = ShortcutDigitsDataModule(seed=3, clean=True)
    plain = DigitsDataModule(seed=3)
    for split in ("train", "val", "test"):
        assert torch.equal(clean.split_tensors(split)[0], plain.split_tensors(split)[0])
        assert (clean.cue_classes[split] == -1).all()


def test_test_cue_none_leaves_the_test_split_clean():
    dm = ShortcutDigitsDataModule(seed=1, test_cue="none")
    assert torch.equal(dm.split_tensors("test")[0], DigitsDataModule(seed=1).split_tensors("test")[0])
    x, y = dm.split_tensors("train")
    assert (read_cue(dm, x) == y).float().mean() > 0.99


def test_deterministic_from_the_seed():
    a, b, c = (ShortcutDigitsDataModule(seed=s) for s in (5, 5, 6))
    for split in ("train", "val", "test"):
        assert torch.equal(a.split_tensors(split)[0], b.split_tensors(split)[0])
    assert np.array_equal(a.cue_classes["test"], b.cue_classes["test"])
    assert not torch.equal(a.split_tensors("train")[0], c.split_tensors("train")[0])


def test_cue_strength_sets_how_often_the_cue_matches_the_label():
    dm = ShortcutDigitsDataModule(seed=0, cue_strength=0.5)
    x, y = dm.split_tensors("train")
    match = (torch.from_numpy(dm.cue_classes["train"]) == y).float().mean().item()
    assert 0.5 < match < 0.6  # 0.5 faithful + 0.5 * 0.1 by chance
    assert ShortcutDigitsDataModule(seed=0, cue_value=0.5).split_tensors("train")[0].max() == 1.0


@pytest.mark.parametrize("region, size", [("sides", 16), ("border", 28)])
def test_cue_mask_and_positions(region, size):
    dm = ShortcutDigitsDataModule(cue_region=region)
    mask = dm.cue_mask()
    assert mask.shape == (1, 8, 8) and mask.dtype == torch.bool and int(mask.sum()) == size
    positions = {dm.cue_position(c) for c in range(10)}
    assert len(positions) == 10 and all(mask[0, r, c] for r, c in positions)
    assert int(dm.class_cue_mask(4).sum()) == 1
    x, y = dm.split_tensors("train")
    rows, cols = zip(*(dm.cue_position(int(c)) for c in y))
    assert (x[torch.arange(len(y)), 0, list(rows), list(cols)] == 1.0).all()


def test_loaders_serve_cued_batches(shortcut):
    batch = next(iter(shortcut.val_dataloader()))
    assert batch["inputs"].shape[1:] == (1, 8, 8)
    assert (read_cue(shortcut, batch["inputs"]) == batch["target"]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cue_region": "middle"}, "valid regions are: " + ", ".join(CUE_REGIONS)),
        ({"cue_strength": 1.5}, "cue_strength"),
        ({"cue_value": 0.0}, "cue_value"),
        ({"test_cue": "label"}, "valid values are: random, none"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShortcutDigitsDataModule(**kwargs)
