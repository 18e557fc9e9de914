"""Decision-tree surrogate: recovers a one-feature threshold, chance on random labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlight.explain.surrogate import SurrogateReport, fit_surrogate


def test_threshold_rule_recovered():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    x[:, 2] = np.where(rng.random(200) < 0.5, -1.0, 1.0) + 0.3 * rng.random(200)  # a clear gap
    y = (x[:, 2] > 0.5).astype(int)
    report = fit_surrogate(x, y)
    assert isinstance(report, SurrogateReport)
    assert report.held_out
    assert report.fidelity == 1.0 and report.train_fidelity == 1.0
    assert report.depth == 1 and report.n_leaves == 2
    assert report.tree.tree_.feature[0] == 2


def test_random_labels_near_chance():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(600, 4)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, 600))
    report = fit_surrogate(x, y, max_depth=4)
    assert 0.4 < report.fidelity < 0.6
    assert report.train_fidelity > report.fidelity
    assert report.depth <= 4


def test_flattens_features_and_accepts_logits():
    rng = np.random.default_rng(2)
    x = torch.randn(40, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    logits = torch.stack([x[:, 0, 1, 1], -x[:, 0, 1, 1]], dim=1)
    report = fit_surrogate(x, logits, max_depth=2, seed=int(rng.integers(10)))
    assert report.tree.n_features_in_ == 18
    assert report.train_fidelity == 1.0


def test_few_samples_use_all_and_say_so():
    x = np.arange(6, dtype=float)[:, None]
    report = fit_surrogate(x, (x[:, 0] > 2).astype(int))
    assert not report.held_out
    assert report.fidelity == report.train_fidelity == 1.0


def test_seeded():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 3)), rng.integers(0, 3, 100)
    assert fit_surrogate(x, y, seed=5).fidelity == fit_surrogate(x, y, seed=5).fidelity


def test_validation():
    with pytest.raises(ValueError, match="10 samples but predictions have 9") as err:
        fit_surrogate(np.zeros((10, 2)), np.zeros(9))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="max_depth"):
        fit_surrogate(np.zeros((10, 2)), np.zeros(10), max_depth=0)
    with pytest.raises(ValueError, match="NaN"):
        fit_surrogate(np.full((10, 2), np.nan), np.zeros(10))
