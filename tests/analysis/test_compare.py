"""Comparison tables and the chance-level reference model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.analysis.compare import compare_models, format_table, network_of
from kdlight.training.reinit import reinitialized


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def test_reinitialized_redraws_parameters_deterministically_without_touching_the_rng():
    model = small_net(0)
    state = torch.random.get_rng_state()
    a, b = reinitialized(model, seed=1), reinitialized(model, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert not torch.equal(a[0].weight, model[0].weight)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not a.training


def test_teacher_row_agrees_with_itself_and_accuracy_is_right():
    teacher, student = small_net(0), small_net(1)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    rows = {r["model"]: r for r in compare_models({"t": teacher, "s": student}, teacher="t", inputs=x, labels=y)}
    assert rows["t"]["agreement"] == 1.0 and abs(rows["t"]["kl"]) < 1e-6
    assert abs(rows["t"]["saliency_rank_correlation"] - 1) < 1e-6 and abs(rows["t"]["ig_cosine"] - 1) < 1e-5
    with torch.no_grad():
        expected = (student(x).argmax(1) == y).float().mean().item()
    assert rows["s"]["acc"] == expected and rows["s"]["params"] == sum(p.numel() for p in student.parameters())
    from kdlight.core.modality import Tabular

    declared = compare_models({"t": teacher, "s": student}, teacher="t", inputs=x, labels=y, modality=Tabular())
    assert declared == list(rows.values())  # the data module's modality: the same as the one read off [N, F] inputs
    table = format_table(list(rows.values()), title="toy")
    assert table.startswith("**toy**") and table.count("\n| ") == 3


def test_network_of_finds_the_trained_network():
    from kdlight import ClassifierModule

    net = small_net(0)
    assert network_of(ClassifierModule(net)) is net
    assert network_of(net) is net


def test_text_maps_are_compared_over_real_tokens_only():
    """Padding (zero maps in every model) must not lift rank correlation: padding a batch further
    changes nothing, and a row equals the metric computed on the unpadded slices by hand."""
    from kdlight.core.modality import Text
    from kdlight.functional.agreement import rank_correlation
    from kdlight.models import TransformerClassifier

    torch.manual_seed(0)
    nets = {
        name: TransformerClassifier(30, 3, d_model=d, depth=1, heads=2, dropout=0.0).eval()
        for name, d in (("teacher", 16), ("student", 8))
    }
    ids = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12]])
    labels = torch.tensor([0, 1])
    text = Text(vocab_size=30)
    rows = compare_models(nets, "teacher", ids, labels, modality=text)
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    again = compare_models(nets, "teacher", padded, labels, modality=text)
    assert rows[1]["saliency_rank_correlation"] == pytest.approx(again[1]["saliency_rank_correlation"], abs=1e-6)
    from kdlight.explain import AttributionConfig, attribute

    target = nets["teacher"](ids).argmax(-1)
    maps = {k: attribute(n, ids, target, AttributionConfig("saliency"), modality=text) for k, n in nets.items()}
    by_hand = [
        rank_correlation(maps["student"][i : i + 1, :n], maps["teacher"][i : i + 1, :n]) for i, n in ((0, 4), (1, 6))
    ]
    assert rows[1]["saliency_rank_correlation"] == pytest.approx(torch.cat(by_hand).nanmean().item(), abs=1e-6)
    # ranking the padding too (zero in every map) would give another number
    all_positions = rank_correlation(maps["student"], maps["teacher"]).nanmean().item()
    assert all_positions != pytest.approx(rows[1]["saliency_rank_correlation"], abs=1e-3)
