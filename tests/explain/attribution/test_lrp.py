"""LRP (epsilon rule): relevance is conserved in bias-free ReLU nets; unsupported layers are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.explain.attribution import METHODS, AttributionConfig, attribute
from kdlight.models import MLP

TARGET = torch.tensor([0, 1, 2, 1])


def _bias_free(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return model.eval()


def _logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, TARGET.view(-1, 1)).squeeze(1)


NETS = {
    "mlp": (lambda: MLP(in_features=12, num_classes=3, hidden=[16, 8]), (12,)),
    "cnn2d": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        ),
        (2, 8, 8),
    ),
    "cnn1d": (
        lambda: nn.Sequential(
            nn.Conv1d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(3),
            nn.Flatten(),
            nn.Identity(),
            nn.Linear(12, 3),
        ),
        (1, 16),
    ),
}


@pytest.mark.parametrize("net", list(NETS))
def test_relevance_sums_to_the_logit_without_biases(net):
    torch.manual_seed(0)
    factory, shape = NETS[net]
    model = _bias_free(factory())
    x = torch.randn(4, *shape)
    relevance = attribute(model, x, TARGET, AttributionConfig("lrp"))
    assert relevance.shape == x.shape
    torch.testing.assert_close(relevance.flatten(1).sum(1), _logit(model, x), rtol=1e-4, atol=1e-5)


def test_epsilon_lrp_of_a_bias_free_relu_mlp_is_input_times_gradient():
    torch.manual_seed(0)
    model = _bias_free(NETS["mlp"][0]())
    x = torch.randn(4, 12)
    lrp = attribute(model, x, TARGET, AttributionConfig("lrp"))
    torch.testing.assert_close(
        lrp, attribute(model, x, TARGET, AttributionConfig("input_x_gradient")), rtol=1e-4, atol=1e-6
    )


def test_unsupported_layers_are_refused_in_one_line_and_the_model_is_left_clean():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 3))
    with pytest.raises(
        ValueError, match=r"lrp has no rule for 1 \(GELU\), 2 \(LayerNorm\); it supports: .*Conv2d.*ReLU"
    ) as info:
        attribute(model, torch.randn(2, 4), 0, AttributionConfig("lrp"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="bare Linear; wrap it in nn.Sequential"):
        attribute(nn.Linear(4, 3), torch.randn(2, 4), 0, AttributionConfig("lrp"))
    torch.manual_seed(0)
    mlp = NETS["mlp"][0]()
    state = {k: v.clone() for k, v in mlp.state_dict().items()}
    attribute(mlp, torch.randn(2, 12), 0, AttributionConfig("lrp"))
    assert all(torch.equal(v, state[k]) for k, v in mlp.state_dict().items())
    assert not any({"rule", "activations"} & set(m.__dict__) for m in mlp.modules())


def test_metadata():
    method = METHODS["lrp"]
    assert method.hooks and not method.pure and not method.takes_baseline and not method.local
