"""reinitialized: the freshly drawn copy behind every chance level."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.training.reinit import reinitialized


def test_a_float_layer_is_redrawn_as_if_built_afresh_with_the_seed_and_the_original_stays():
    layer = nn.Linear(6, 3)
    before = layer.weight.detach().clone()
    fresh = reinitialized(layer, seed=7)
    torch.manual_seed(7)
    built = nn.Linear(6, 3)  # its constructor calls reset_parameters once
    assert torch.equal(fresh.weight, built.weight) and torch.equal(fresh.bias, built.bias)
    assert torch.equal(layer.weight, before) and not fresh.training


def test_a_layer_that_cannot_redraw_its_parameters_is_one_clear_line():
    class Frozen(nn.Linear):
        built = False

        def reset_parameters(self) -> None:
            if self.built:
                raise NotImplementedError("aten.uniform_ is not implemented for FrozenTensor\nmore detail")
            super().reset_parameters()

    frozen = Frozen(4, 2)
    frozen.built = True
    model = nn.Sequential(nn.Linear(4, 4), frozen)
    with pytest.raises(TypeError, match=r"cannot re-draw the parameters of Frozen '1'.*aten.uniform_") as info:
        reinitialized(model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_transformers_layers_without_reset_parameters_are_redrawn_too(model_type):
    from kdlight.models import HFCausalLM

    model = HFCausalLM(
        model_type, vocab_size=40, max_length=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(3.0)  # stands in for training: no fresh initialisation draws values near 3
    fresh = reinitialized(model, seed=0)
    for (name, trained), (_, redrawn) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert not torch.equal(trained, redrawn), name
        assert redrawn.abs().max() < 2.5, name
