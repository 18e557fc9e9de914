"""LIME: on a linear model the surrogate recovers the contributions, so it ranks features like them."""

from __future__ import annotations

import torch
from torch import nn

from kdlight.explain.attribution import METHODS, AttributionConfig, attribute


def _linear(weights: list[float]) -> nn.Linear:
    model = nn.Linear(len(weights), 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = torch.tensor(weights)
    return model


def test_ranks_features_like_the_weights_of_a_linear_model():
    weights = [3.0, -2.5, 2.0, -1.5, 1.0, 0.5]
    model = _linear(weights)
    x = torch.ones(2, len(weights))  # contribution of feature j: w_j * (1 - 0)
    maps = attribute(model, x, 1, AttributionConfig("lime", n_samples=200, baseline="zeros"))
    expected = torch.tensor(weights)
    for row in maps:
        assert torch.equal(row.abs().argsort(descending=True), expected.abs().argsort(descending=True))
        assert torch.equal(row.sign(), expected.sign())
        torch.testing.assert_close(row, expected, rtol=0.1, atol=0.1)  # Lasso (alpha 0.01) shrinks a little


def test_groups_share_one_value_and_the_seed_fixes_the_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4))
    x = torch.randn(3, 1, 6, 6)
    config = AttributionConfig("lime", patch_size=3, n_samples=20)
    a = attribute(model, x, 2, config)
    assert torch.equal(a, attribute(model, x, 2, config))
    assert not torch.equal(a, attribute(model, x, 2, AttributionConfig("lime", patch_size=3, n_samples=20, seed=1)))
    patches = a.unfold(2, 3, 3).unfold(3, 3, 3)  # [N, 1, 2, 2, 3, 3]: one 3x3 patch per feature
    assert torch.equal(patches, patches[..., :1, :1].expand_as(patches))


def test_metadata():
    method = METHODS["lime"]
    assert method.random and not method.pure and method.perturbation and method.takes_baseline
