"""Comparison tables and the chance-level reference model."""

from __future__ import annotations

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
