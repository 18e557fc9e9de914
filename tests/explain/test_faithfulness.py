"""Deletion / insertion AUC and infidelity on models whose answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.explain.faithfulness import (
    deletion_insertion_auc,
    deletion_insertion_curves,
    infidelity_score,
)


def _linear(f: int = 6, k: int = 3, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(f, k)


def _data(n: int = 8, f: int = 6, k: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g), torch.randint(0, k, (n,), generator=g)


class _Evidence(nn.Module):
    """Two classes; logit_1 - logit_0 = sum_j w_j x_j with w > 0, so the true map is w * x."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


# ------------------------------------------------------------------------------------------
# infidelity
# ------------------------------------------------------------------------------------------
def test_infidelity_exact_for_gradient_times_input_on_linear_model():
    model = _linear()
    x, t = _data()
    exact = model.weight.detach()[t] * x
    good = infidelity_score(model, x, exact, t)
    bad = infidelity_score(model, x, torch.randn_like(x), t)
    assert good.shape == bad.shape == (8,)
    assert good.max() < 1e-8
    assert (bad > 1e-3).all() and bad.mean() > 1e4 * good.mean()


def test_infidelity_local_maps_use_additive_noise():
    model = _linear()
    x, t = _data()
    gradient = model.weight.detach()[t]
    assert infidelity_score(model, x, gradient, t, multiply_by_inputs=False).max() < 1e-8
    assert infidelity_score(model, x, gradient, t).max() > 1e-3  # wrong perturbation for a local map


def test_infidelity_seeded_and_global_rng_untouched():
    model = _linear()
    x, t = _data()
    a = torch.randn_like(x)
    state = torch.get_rng_state()
    first = infidelity_score(model, x, a, t, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, infidelity_score(model, x, a, t, seed=3))
    assert not torch.equal(first, infidelity_score(model, x, a, t, seed=4))
    batched = infidelity_score(model, x, a, t, seed=3, batch_size=16)  # other draws, same law
    assert batched.shape == (8,) and torch.isfinite(batched).all()
    assert torch.equal(batched, infidelity_score(model, x, a, t, seed=3, batch_size=16))


# ------------------------------------------------------------------------------------------
# deletion / insertion
# ------------------------------------------------------------------------------------------
def test_true_order_beats_reversed_order():
    w = torch.linspace(0.2, 2.0, 8)
    model = _Evidence(w)
    x = torch.rand(5, 8) + 0.5
    truth = w * x
    target = torch.ones(5, dtype=torch.long)
    del_true, ins_true = deletion_insertion_auc(model, x, truth, target, steps=8)
    del_rev, ins_rev = deletion_insertion_auc(model, x, -truth, target, steps=8)
    assert del_true.shape == ins_true.shape == (5,)
    assert (del_true < del_rev).all()
    assert (ins_true > ins_rev).all()


def test_curve_endpoints_and_constant_model():
    w = torch.ones(6)
    model = _Evidence(w)
    x = torch.rand(3, 6) + 0.1
    deletion, insertion, fractions = deletion_insertion_curves(model, x, x, 1, steps=3)
    assert deletion.shape == insertion.shape == (3, 4)
    assert torch.allclose(fractions, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    full = torch.sigmoid(x.sum(1))
    assert torch.allclose(deletion[:, 0], full) and torch.allclose(insertion[:, -1], full)
    assert torch.allclose(deletion[:, -1], torch.full((3,), 0.5))
    assert torch.allclose(insertion[:, 0], torch.full((3,), 0.5))
    flat = _Evidence(torch.zeros(6))  # probability 1/2 everywhere -> both areas 1/2
    d, i = deletion_insertion_auc(flat, x, torch.randn_like(x), 0, steps=5)
    assert torch.allclose(d, torch.full((3,), 0.5)) and torch.allclose(i, torch.full((3,), 0.5))


def test_more_steps_than_features_and_batching():
    model = _linear()
    x, t = _data()
    a = torch.randn_like(x)
    ref = deletion_insertion_auc(model, x, a, t, steps=20, batch_size=256)
    small = deletion_insertion_auc(model, x, a, t, steps=20, batch_size=7)
    for r, s in zip(ref, small):
        assert torch.allclose(r, s, atol=1e-6)


def test_images_and_signals_move_whole_positions():
    # the image model only looks at channel 0; the map puts its evidence on channel 1 of the same
    # pixels: summed over channels, the ordering is still the true one
    w = torch.zeros(2, 3, 3)
    w[0] = torch.linspace(0.1, 1.0, 9).view(3, 3)
    model = _Evidence(w)
    x = torch.rand(4, 2, 3, 3) + 0.5
    truth = torch.zeros_like(x)
    truth[:, 1] = w[0] * x[:, 0]
    d, i = deletion_insertion_auc(model, x, truth, 1, steps=9)
    d_rev, i_rev = deletion_insertion_auc(model, x, -truth, 1, steps=9)
    assert d.shape == (4,) and (d < d_rev).all() and (i > i_rev).all()
    sig = _Evidence(torch.rand(3, 10))
    xs = torch.rand(4, 3, 10)
    d, i = deletion_insertion_auc(sig, xs, torch.randn_like(xs), 1, steps=4)
    assert d.shape == i.shape == (4,)


def test_tensor_baseline_broadcasts():
    w = torch.ones(4)
    model = _Evidence(w)
    x = torch.ones(2, 4)
    d, i = deletion_insertion_auc(model, x, x, 1, steps=4, baseline=torch.ones(4))
    # baseline equal to the input: nothing changes, the curve is flat
    assert torch.allclose(d, torch.sigmoid(torch.tensor(4.0)).expand(2))
    assert torch.allclose(i, d)


# ------------------------------------------------------------------------------------------
# contexts
# ------------------------------------------------------------------------------------------
def test_inference_mode_and_no_grad():
    model = _linear()
    x, t = _data()
    exact = model.weight.detach()[t] * x
    ref = deletion_insertion_auc(model, x, exact, t)
    with torch.inference_mode():
        xi, ai, ti = x.clone(), exact.clone(), t.clone()
        assert xi.is_inference()
        got = deletion_insertion_auc(model, xi, ai, ti)
        inf = infidelity_score(model, xi, ai, ti)
    assert torch.allclose(ref[0], got[0]) and torch.allclose(ref[1], got[1])
    assert inf.max() < 1e-8
    with torch.no_grad():
        assert infidelity_score(model, x, exact, t).shape == (8,)


def test_eval_mode_restored_and_grads_untouched():
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    model[3].eval()  # a mixed state must come back as it was
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    x, t = _data()
    a = torch.randn_like(x)
    first = deletion_insertion_auc(model, x, a, t)
    second = deletion_insertion_auc(model, x, a, t)
    assert torch.equal(first[0], second[0])  # dropout off
    infidelity_score(model, x, a, t)
    assert seen and not any(seen)
    assert model.training and model[1].training and not model[3].training
    assert all(p.grad is None for p in model.parameters())


def test_input_validation():
    model = _linear()
    x, t = _data()
    with pytest.raises(ValueError, match="shape"):
        deletion_insertion_auc(model, x, x[:, :3], t)
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion_auc(model, x, x, t, steps=0)
    with pytest.raises(ValueError, match="target"):
        deletion_insertion_auc(model, x, x, t[:3])
    with pytest.raises(ValueError, match="baseline"):
        infidelity_score(model, x, x, t, baseline=torch.zeros(8, 6))


def test_the_modality_says_what_moves_together():
    """With ``Image()`` whole pixels move (all channels); a wrong modality is refused in one line."""
    from kdlight.core.modality import Image, Tabular

    w = torch.zeros(2, 2, 2)
    w[0] = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    model = _Evidence(w)
    x = torch.rand(3, 2, 2, 2) + 0.5
    truth = torch.zeros_like(x)
    truth[:, 1] = w[0] * x[:, 0]  # evidence on the other channel of the same pixels
    guessed = deletion_insertion_auc(model, x, truth, 1, steps=4)
    explicit = deletion_insertion_auc(model, x, truth, 1, steps=4, modality=Image())
    assert all(torch.equal(a, b) for a, b in zip(guessed, explicit))
    with pytest.raises(ValueError, match=r"tabular inputs must be \[N, F\]"):
        deletion_insertion_auc(model, x, truth, 1, modality=Tabular())


# ------------------------------------------------------------------------------------------
# token ids
# ------------------------------------------------------------------------------------------
def test_token_deletion_and_insertion_replace_real_tokens_by_the_reference_token():
    from kdlight.core.modality import Text
    from kdlight.models import FastText

    torch.manual_seed(0)
    model = FastText(20, num_classes=3, embed_dim=6, pad_token_id=0)
    text = Text(20, pad_id=0, reference_id=1)
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 0, 0, 0, 0]])
    maps = torch.tensor([[0.1, 0.4, -0.2, 0.3, 9.0, 9.0], [-1.0, 2.0, 9.0, 9.0, 9.0, 9.0]])  # padding never moves
    deletion, insertion, fractions = deletion_insertion_curves(model, ids, maps, 2, steps=4, modality=text)

    def prob(row: list[int]) -> float:
        with torch.no_grad():
            return torch.softmax(model(torch.tensor([row])), 1)[0, 2].item()

    # sequence 0: 4 real tokens, one per step in map order (positions 1, 3, 0, 2)
    order, row = [1, 3, 0, 2], [5, 6, 7, 8, 0, 0]
    for j in range(5):
        gone = [1 if p in order[:j] else t for p, t in enumerate(row)]
        shown = [t if p in order[:j] or t == 0 else 1 for p, t in enumerate(row)]
        assert deletion[0, j].item() == pytest.approx(prob(gone), abs=1e-6)
        assert insertion[0, j].item() == pytest.approx(prob(shown), abs=1e-6)
    # sequence 1: 2 real tokens in 4 steps: cuts round(j * 2 / 4) = 0, 0, 1, 2, 2 (round half to even)
    assert fractions[1].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0] and fractions[0].tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert deletion[1, 2].item() == pytest.approx(prob([9, 1, 0, 0, 0, 0]), abs=1e-6)
    areas = deletion_insertion_auc(model, ids, maps, 2, steps=4, modality=text)
    for area, curve in zip(areas, (deletion, insertion)):
        torch.testing.assert_close(area, torch.trapezoid(curve, fractions, dim=1))
    assert torch.isnan(infidelity_score(model, ids, maps, 2)).all()  # Gaussian noise on ids: not defined
    with pytest.raises(ValueError, match="removed by the text modality's reference token"):
        deletion_insertion_auc(model, ids, maps, 2, baseline=torch.zeros(1, 6), modality=text)
