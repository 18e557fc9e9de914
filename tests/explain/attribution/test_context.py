"""The one attribution context: placement, flags, RNG fork, targets; shared by attribute and faithfulness."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from kdlight.core.modality import Tabular
from kdlight.explain.attribution import AttributionConfig, attribute
from kdlight.explain.attribution.context import Placement, as_target, attribution_context
from kdlight.explain.faithfulness import deletion_insertion_auc, infidelity_score


class BagOfTokens(nn.Module):
    """Token ids ``[N, L]`` -> mean embedding -> logits (integer inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(1))


def test_placement_casts_floating_tensors_only():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    place = Placement.of(model, torch.device("cpu"))
    assert place.dtype == torch.bfloat16
    with torch.inference_mode():
        x, ids = torch.randn(2, 3), torch.arange(6).view(2, 3)
    assert place.put(x).dtype == torch.bfloat16 and not place.put(x).is_inference()
    assert place.put(ids).dtype == torch.int64 and torch.equal(place.put(ids), ids)
    assert place.put(x, torch.float32).dtype == torch.float32
    assert Placement.of(nn.ReLU(), torch.device("meta")) == Placement(torch.device("meta"), torch.float32)


def test_context_flags_and_seeded_fork():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout()).train()
    model[0].eval()
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        with attribution_context(model, (torch.device("cpu"),), grad=True, seed=3):
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            assert not torch.is_autocast_enabled("cpu") and not any(m.training for m in model.modules())
            first = torch.rand(2)
        with attribution_context(model, (torch.device("cpu"),), grad=False, seed=3):
            assert not torch.is_grad_enabled()
            assert torch.equal(torch.rand(2), first)  # same seed, same draws
    assert model.training and not model[0].training and model[1].training
    assert torch.equal(torch.rand(2), expected)  # the caller's stream goes on untouched
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state


def test_targets():
    assert as_target(2, 3, torch.device("cpu")).tolist() == [2, 2, 2]
    assert as_target([0, 1], 2, torch.device("cpu")).tolist() == [0, 1]
    assert as_target(torch.tensor([[1]]), 2, torch.device("cpu")).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"one class index per input \(3\), got 2"):
        as_target(torch.tensor([0, 1]), 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="target must be an int"):
        as_target(True, 3, torch.device("cpu"))


def test_integer_inputs_are_never_cast_to_float():
    torch.manual_seed(0)
    model, ids = BagOfTokens(), torch.randint(1, 10, (3, 6))
    maps = attribute(model, ids, 0, AttributionConfig("occlusion"), modality=Tabular())  # tokens replaced by id 0
    with torch.no_grad():
        for j in range(6):
            dropped = ids.clone()
            dropped[:, j] = 0
            torch.testing.assert_close(maps[:, j], model(ids)[:, 0] - model(dropped)[:, 0])
    deletion, insertion = deletion_insertion_auc(model, ids, maps, 0, modality=Tabular())
    assert deletion.shape == insertion.shape == (3,)
    with pytest.raises(
        ValueError, match="saliency differentiates the model .* needs floating inputs; these are torch.int64"
    ):
        attribute(model, ids, 0, AttributionConfig("saliency"), modality=Tabular())
    assert torch.isnan(infidelity_score(model, ids, maps, 0)).all()  # no Gaussian noise on token ids
    with pytest.raises(ValueError, match="no default modality; pass the data module's modality"):
        attribute(model, ids, 0, AttributionConfig("occlusion"))
