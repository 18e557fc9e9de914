"""Structured channel pruning: smaller models, exact outputs when only dead channels go, one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlight.compression import StructuredPruning, apply_record, prune_channels
from kdlight.models import MLP, CNN1d, CNN2d

MODELS = {
    "cnn1d": (lambda: CNN1d(channels=[8, 8, 8], hidden=32), (4, 1, 40)),
    "cnn2d": (lambda: CNN2d(channels=[8, 16], hidden=32), (4, 1, 8, 8)),
    "mlp": (lambda: MLP(64, hidden=[32, 16]), (4, 64)),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_pruned_model_is_smaller_and_its_record_rebuilds_it(name):
    build, shape = MODELS[name]
    model, x = build().eval(), torch.randn(shape)
    dense = n_params(model)
    record = prune_channels(model, x, ratio=0.5)
    assert n_params(model) < 0.6 * dense
    assert model(x).shape == (shape[0], 10)  # the classes are kept
    fresh = apply_record(build(), record)
    fresh.load_state_dict(model.state_dict())  # strict: every shape matches
    assert torch.equal(fresh.eval()(x), model(x))


def kill_channels(model: nn.Module, layers: dict[str, int]) -> None:
    """Zero the first ``n`` output channels of each conv/linear layer, its BatchNorm and the next
    layer's inputs from them: those channels then contribute exactly nothing."""
    modules = dict(model.named_modules())
    order = [n for n, m in modules.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for path, n in layers.items():
            layer = modules[path]
            layer.weight[:n] = 0
            if layer.bias is not None:
                layer.bias[:n] = 0
            norm = modules.get(path.rsplit(".", 1)[0] + ".1")
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.weight[:n], norm.bias[:n] = 0, 0
            following = modules[order[order.index(path) + 1]]
            following.weight[:, :n] = 0


@pytest.mark.parametrize(
    ("name", "dead"),
    [
        ("cnn1d", {"conv1.0": 4, "conv2.0": 4, "conv3.0": 4, "hidden.0": 16}),
        ("mlp", {"layers.0.0": 16, "layers.1.0": 8}),
    ],
)
def test_removing_only_dead_channels_keeps_the_outputs(name, dead):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(shape)
    kill_channels(model, dead)
    before, dense = model(x), n_params(model)
    prune_channels(model, x, ratio=0.5)  # half of each layer: exactly the dead channels
    assert n_params(model) < dense
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        (["conv9"], "has no layer 'conv9'; prunable layers are: conv1.0, conv2.0, conv3.0, hidden.0"),
        (["classifier"], "produces the model's logits"),
        (["conv1.1"], "is a BatchNorm1d, which the dependency graph cannot prune"),
    ],
)
def test_layers_that_cannot_be_pruned_are_one_line(layers, words):
    model = CNN1d(channels=[8, 8, 8], hidden=32)
    with pytest.raises(ValueError) as err:
        prune_channels(model, torch.randn(2, 1, 40), 0.5, layers=layers)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("ratio", [1.0, -0.5, 2])
def test_ratio_outside_0_1_is_one_line(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a fraction in \[0, 1\)"):
        StructuredPruning(ratio=ratio)


def test_named_layers_are_the_only_ones_pruned():
    model = CNN1d(channels=[8, 8, 8], hidden=32)
    reference = copy.deepcopy(model)
    prune_channels(model, torch.randn(2, 1, 40), 0.5, layers=["conv2.0"])
    assert model.conv2[0].out_channels == 4 and model.conv3[0].in_channels == 4
    assert model.conv1[0].out_channels == reference.conv1[0].out_channels == 8
    assert model.conv3[0].out_channels == 8 and model.hidden[0].out_features == 32
