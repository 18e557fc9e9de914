"""Localisation of a map on known relevant features: hand-computed values, invariants, the shortcut cue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from torch import nn

from kdlight.data.shortcut import ShortcutDigitsDataModule
from kdlight.explain.metrics import AgreementMean
from kdlight.explain.metrics.localisation import relevance_mass, top_k_hit_rate

# three maps over 4 features, and their ground-truth masks
MAPS = torch.tensor([[0.5, -0.2, 0.3, 0.0], [1.0, 2.0, -3.0, 4.0], [0.1, -0.9, 0.4, 0.2]])
MASKS = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]], dtype=torch.bool)


def test_relevance_mass_hand_computed():
    # (0.5 + 0.3) / 1.0;  4 / 10;  (0.1 + 0.2) / 1.6
    torch.testing.assert_close(relevance_mass(MAPS, MASKS), torch.tensor([0.8, 0.4, 0.1875]))


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, [1.0, 1.0, 0.0]),  # top-1: feature 0 | 3 | 1 (the pointing game)
        (2, [1.0, 1.0, 0.0]),  # {0, 2} of {0, 2} | {3, 2} holds 3 | {1, 2} misses both
        (3, [1.0, 1.0, 0.5]),  # {0, 2, 1} | ... | {1, 2, 3}: 1 of min(3, 2) = 2
        (4, [1.0, 1.0, 1.0]),  # row 0: feature 3 has zero attribution and is not pointed at
    ],
)
def test_top_k_hit_rate_hand_computed(k, expected):
    assert top_k_hit_rate(MAPS, MASKS, k).tolist() == expected


def test_a_map_equal_to_its_mask_scores_one():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(8, 2, 4, 4, generator=g) < 0.3
    masks[0] = False
    masks[0, 1, 2, 3] = True  # a single relevant feature, as the shortcut cue
    assert relevance_mass(masks.float(), masks).tolist() == [1.0] * 8
    for k in (1, 3, 32):
        assert top_k_hit_rate(masks.float(), masks, k).tolist() == [1.0] * 8


def test_top_one_is_the_pointing_game():
    """k = 1: a hit when the feature of largest |attribution| (first one on ties) is relevant."""
    g = torch.Generator().manual_seed(1)
    maps = torch.randint(-2, 3, (50, 9), generator=g).float()
    maps[:, 0] = 3.0 * (torch.rand(50, generator=g) < 0.2)  # some rows with a unique maximum at 0
    masks = torch.rand(50, 9, generator=g) < 0.4
    masks[:, 0] |= torch.arange(50) % 2 == 0
    maps[maps.abs().sum(1) == 0, 4] = 1.0  # no all-zero maps here
    hits = [float(masks[i, int(np.argmax(np.abs(maps[i].numpy())))]) for i in range(50)]
    assert top_k_hit_rate(maps, masks, 1).tolist() == hits


def test_no_ground_truth_or_a_non_finite_map_is_nan_and_a_zero_map_scores_zero():
    maps = torch.tensor([[1.0, 2.0], [float("nan"), 1.0], [0.0, 0.0]])
    masks = torch.tensor([[False, False], [True, False], [True, False]])
    for values in (relevance_mass(maps, masks), top_k_hit_rate(maps, masks, 1)):
        assert torch.isnan(values[:2]).all() and values[2].item() == 0.0
    metric = AgreementMean("localisation_mass")
    metric.update(maps, masks)
    metric.update(MAPS, MASKS)
    assert metric.skipped.item() == 2 and metric.count.item() == 4
    assert metric.compute().item() == pytest.approx((0.0 + 0.8 + 0.4 + 0.1875) / 4)


def test_masks_broadcast_and_are_checked():
    maps = torch.randn(3, 2, 4, 4)
    region = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    region[..., 0] = True  # one region for every sample and channel
    expected = relevance_mass(maps, region.expand(3, 2, 4, 4).clone())
    torch.testing.assert_close(relevance_mass(maps, region), expected)
    with pytest.raises(ValueError, match="boolean tensor"):
        relevance_mass(maps, region.float())
    with pytest.raises(ValueError, match=r"\(1, 3\) do not broadcast to the maps' shape \(3, 2, 4, 4\)"):
        top_k_hit_rate(maps, torch.ones(1, 3, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="1 <= k <= F"):
        top_k_hit_rate(maps, region, 33)


class CueReader(nn.Module):
    """A pure shortcut model: logit c is the intensity of class c's cue pixel."""

    def __init__(self, datamodule: ShortcutDigitsDataModule) -> None:
        super().__init__()
        rows, cols = zip(*(datamodule.cue_position(c) for c in range(datamodule.num_classes)), strict=True)
        self.rows, self.cols = list(rows), list(cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, self.rows, self.cols]


def test_shortcut_masks_hold_each_images_cue_pixel_and_a_cue_reader_localises_on_it():
    dm = ShortcutDigitsDataModule(seed=3)
    indices = torch.tensor([0, 4, 9, 17, 30])
    masks = dm.ground_truth_masks("val", indices)
    cues = dm.cue_classes["val"][indices.numpy()]
    assert masks.shape == (5, 1, 8, 8) and masks.dtype == torch.bool
    for mask, cue in zip(masks, cues, strict=True):
        assert torch.equal(mask, dm.class_cue_mask(int(cue)))
    x = dm.split_tensors("val")[0][indices]
    maps = Saliency(CueReader(dm)).attribute(x.clone().requires_grad_(), target=torch.as_tensor(cues))
    assert relevance_mass(maps, masks).tolist() == [1.0] * 5
    assert top_k_hit_rate(maps, masks, 1).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="unknown split 'dev'; valid splits are: train, val, test"):
        dm.ground_truth_masks("dev", indices)


def test_images_without_a_cue_have_no_ground_truth():
    dm = ShortcutDigitsDataModule(seed=3, test_cue="none")
    masks = dm.ground_truth_masks("test", [0, 1, 2])
    assert not masks.any()
    assert torch.isnan(relevance_mass(torch.rand(3, 1, 8, 8), masks)).all()
