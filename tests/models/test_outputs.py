"""logits_of / return_logits: every model output becomes the logits tensor."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from kdlight.models import logits_of, return_logits


class DictModel(nn.Module):
    def __init__(self, wrap: str = "dict") -> None:
        super().__init__()
        self.linear, self.wrap = nn.Linear(4, 3), wrap

    def forward(self, x: torch.Tensor):
        logits = self.linear(x)
        if self.wrap == "dict":
            return {"features": x, "logits": logits}
        if self.wrap == "model_output":
            return SequenceClassifierOutput(logits=logits, hidden_states=(x,))
        return (logits, x)


def test_logits_of_each_output_kind() -> None:
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of({"loss": None, "logits": logits}) is logits
    assert logits_of(SequenceClassifierOutput(logits=logits)) is logits
    assert logits_of((None, logits, torch.zeros(1))) is logits
    assert logits_of([logits]) is logits


@pytest.mark.parametrize(
    ("output", "match"),
    [({"scores": torch.zeros(1)}, "dict without a 'logits' tensor .*keys: scores"), ("text", "of type str")],
)
def test_unreadable_outputs_are_one_line_errors(output, match: str) -> None:
    with pytest.raises(TypeError, match=match) as error:
        logits_of(output)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("wrap", ["dict", "model_output", "tuple"])
def test_return_logits_makes_every_caller_see_a_tensor(wrap: str) -> None:
    torch.manual_seed(0)
    model = DictModel(wrap)
    x = torch.randn(5, 4)
    assert return_logits(return_logits(model)) is model
    assert len(model._forward_hooks) == 1  # idempotent: one hook however often it is called
    out = model(x)
    torch.testing.assert_close(out, model.linear(x))
    # Captum calls the model as every other caller does: IG of a linear model is w * (x - 0)
    attr = IntegratedGradients(model).attribute(x, target=2, n_steps=8)
    torch.testing.assert_close(attr, model.linear.weight[2] * x)


def test_return_logits_leaves_tensor_models_alone() -> None:
    model = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    expected = model(x)
    torch.testing.assert_close(return_logits(model)(x), expected)
