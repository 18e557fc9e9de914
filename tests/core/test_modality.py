"""Modalities: feature groups, positions, the one rank-based guess, and each data module's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlight.core.modality import MAX_FEATURES_WITHOUT_PATCHES, Image, Modality, Signal, Tabular
from kdlight.data import (
    BreastCancerDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    MNIST1DDataModule,
)
from kdlight.data.shortcut import ShortcutDigitsDataModule


def test_for_inputs_is_the_one_rank_based_guess():
    assert Modality.for_inputs(torch.zeros(2, 5)) == Tabular()
    assert Modality.for_inputs(torch.zeros(2, 5), ["a"] * 5) == Tabular(feature_names=["a"] * 5)
    assert Modality.for_inputs(np.zeros((2, 1, 40), dtype=np.float32)) == Signal()
    assert Modality.for_inputs(torch.zeros(2, 3, 4, 4)) == Image()
    assert Modality.for_inputs(torch.zeros(2, 1, 4, 4), ["ignored"]) == Image()
    with pytest.raises(ValueError, match=r"\[N, F\], \[N, C, L\] or \[N, C, H, W\], got shape \(5,\)"):
        Modality.for_inputs(torch.zeros(5))
    with pytest.raises(ValueError, match="int64 .token ids.. have no default modality"):  # never tabular bars
        Modality.for_inputs(torch.zeros(2, 7, dtype=torch.long))


def test_shapes_are_checked_in_one_line():
    Image().check((2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"^image inputs must be \[N, C, H, W\], got shape \[2, 64\]$"):
        Image().check((2, 64))
    with pytest.raises(ValueError, match="feature_names has 2 names for 5 features"):
        Tabular(feature_names=["a", "b"]).check((3, 5))
    assert Image().num_features((3, 4, 4)) == 48 and Tabular().num_features((30,)) == 30


def test_feature_masks():
    assert Tabular().feature_mask(torch.randn(2, 5)).tolist() == [[0, 1, 2, 3, 4]]
    sig = Signal().feature_mask(torch.randn(2, 3, 10), patch_size=4)
    assert sig.shape == (1, 1, 10) and sig.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    img = Image().feature_mask(torch.randn(2, 3, 4, 6), patch_size=2)
    assert img.shape == (1, 1, 4, 6)
    assert img[0, 0].tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]
    assert Image().feature_mask(torch.randn(1, 1, 8, 8)).unique().numel() == 64
    assert Image().feature_mask(torch.randn(1, 1, 28, 28), patch_size=7).unique().numel() == 16
    assert Image().feature_mask(torch.randn(1, 1, 5, 5), patch_size=2).unique().numel() == 9  # smaller edge patches
    with pytest.raises(ValueError, match="exceeds"):
        Image().feature_mask(torch.randn(1, 1, 5, 5), patch_size=6)
    with pytest.raises(ValueError, match="set patch_size"):
        Signal().feature_mask(torch.randn(1, 1, MAX_FEATURES_WITHOUT_PATCHES + 1))
    with pytest.raises(ValueError, match="patch_size must be None or an integer >= 1"):
        Image().feature_mask(torch.randn(1, 1, 4, 4), patch_size=0)


def test_patch_size_hint_is_the_smallest_fitting_patch():
    assert Image().patch_size_hint((3, 32, 32)) == 2  # 16 x 16 = 256 patches
    assert Image().patch_size_hint((1, 8, 8)) == 1
    assert Signal().patch_size_hint((1, 1000)) == 4
    assert Tabular().patch_size_hint((30,)) is None


def test_positions_are_shared_across_channels():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(Image().position_scores(maps), maps.sum(1).flatten(1))
    moved = torch.tensor([[True, False, False, True]])
    mask = Image().position_mask(moved, (3, 2, 2))
    assert mask.shape == (1, 1, 2, 2) and mask[0, 0].tolist() == [[True, False], [False, True]]
    assert Signal().position_mask(torch.ones(4, 7, dtype=torch.bool), (2, 7)).shape == (4, 1, 7)
    rows = torch.randn(3, 5)
    assert torch.equal(Tabular().position_scores(rows), rows)
    assert Tabular().position_mask(torch.ones(3, 5, dtype=torch.bool), (5,)).shape == (3, 5)


def test_reference_input_is_zeros_in_the_inputs_dtype():
    ref = Image().reference(torch.randn(4, 3, 2, 2, dtype=torch.float64))
    assert ref.shape == (1, 3, 2, 2) and ref.dtype == torch.float64 and not ref.any()
    assert Tabular().reference(torch.ones(2, 5, dtype=torch.long)).dtype == torch.long


def test_every_data_module_owns_its_modality(tmp_path):
    assert DigitsDataModule().modality == Image()
    assert ShortcutDigitsDataModule().modality == Image()
    assert CIFAR10DataModule(data_dir=str(tmp_path)).modality == Image()
    assert CIFAR100DataModule(data_dir=str(tmp_path)).modality == Image()
    assert MNIST1DDataModule().modality == Signal()
    cancer = BreastCancerDataModule()
    assert cancer.modality == Tabular(feature_names=cancer.feature_names)
    assert cancer.modality.feature_names[0] == "mean radius"
