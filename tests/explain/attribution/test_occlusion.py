"""Occlusion: for a linear model each window's value is ``sum_window w * (x - baseline)``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.core.modality import Image, Signal, Tabular
from kdlight.explain.attribution import METHODS, AttributionConfig, attribute


class Linear(nn.Module):
    """``logits = x.flatten(1) @ W.T + b`` with weights shaped like one input per class."""

    def __init__(self, shape: tuple[int, ...], classes: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(classes, *shape, generator=g))
        self.b = nn.Parameter(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.flatten(1).T + self.b


def _data(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, *shape, generator=g), torch.tensor([0, 1, 2, 1]), torch.randn(10, *shape, generator=g)


@pytest.mark.parametrize("shape", [(7,), (1, 12), (1, 5, 5)])
@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_single_feature_windows_give_weight_times_input_minus_baseline(shape, baseline):
    model = Linear(shape)
    x, target, train = _data(shape)
    maps = attribute(model, x, target, AttributionConfig("occlusion", baseline=baseline), train_inputs=train)
    base = torch.zeros(shape) if baseline == "zeros" else train.mean(0)
    torch.testing.assert_close(maps, model.w.detach()[target] * (x - base), rtol=1e-5, atol=1e-5)


def test_windows_are_the_modality_patches_across_channels():
    """A 2x2 window spanning both channels: each element gets its whole window's drop; the 5x5
    image leaves smaller windows at the far edges (the feature mask's patches)."""
    shape = (2, 5, 5)
    model = Linear(shape)
    x, target, _ = _data(shape)
    maps = attribute(model, x, target, AttributionConfig("occlusion", patch_size=2))
    contribution = model.w.detach()[target] * x
    mask = Image().feature_mask(x, 2)[0, 0]
    for group in mask.unique():
        inside = mask == group
        expected = contribution[:, :, inside].sum((1, 2))
        got = maps[:, :, inside]
        torch.testing.assert_close(got, expected[:, None, None].expand_as(got), rtol=1e-5, atol=1e-5)


def test_window_shapes_come_from_the_modality():
    assert Image().occlusion_window((3, 8, 8), 4) == ((3, 4, 4), (1, 4, 4))
    assert Signal().occlusion_window((2, 40), 5) == ((2, 5), (1, 5))
    assert Tabular().occlusion_window((30,), None) == ((1,), (1,))
    with pytest.raises(ValueError, match="set patch_size"):
        Image().occlusion_window((3, 32, 32), None)


def test_metadata():
    method = METHODS["occlusion"]
    assert method.pure and method.perturbation and method.takes_baseline and not method.local
