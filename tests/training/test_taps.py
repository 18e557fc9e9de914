"""FeatureTaps: what a tap keeps of each kind of module output, and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from kdlight.training.taps import FeatureTaps


class Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor):
        if self.kind == "tuple":
            return (None, x + 1, x)
        if self.kind == "dict":
            return {"mask": None, "hidden": x + 1, "other": x}
        if self.kind == "model_output":
            return BaseModelOutput(last_hidden_state=x + 1, hidden_states=(x,))
        return x + 1


class Net(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.block = Returns(kind)
        self.layers = nn.ModuleList([nn.Identity(), nn.Identity()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x if isinstance(out, torch.Tensor) else x * 2


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict", "model_output"])
def test_tap_keeps_the_first_tensor_of_any_output(kind: str) -> None:
    x = torch.randn(2, 3)
    net = Net(kind)
    with FeatureTaps(net, ["block"]) as taps:
        net(x)
        features = taps.pop()
    torch.testing.assert_close(features["block"], x + 1)
    assert taps.pop() == {}


def test_index_past_the_end_names_the_valid_range() -> None:
    with pytest.raises(ValueError, match=r"student has no submodule 'layers.2': Net has layers.0 to layers.1"):
        FeatureTaps(Net("tensor"), ["layers.2"], role="student")


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="teacher has no submodule 'blok'.*valid names are: block.*did you mean block"):
        FeatureTaps(Net("tensor"), ["blok"], role="teacher")


def test_remove_detaches_the_hooks() -> None:
    net = Net("tensor")
    taps = FeatureTaps(net, ["block", "layers.1"])
    taps.remove()
    net(torch.randn(1, 3))
    assert taps.pop() == {}
