"""Explanation stability: Captum's max-sensitivity and a map's agreement with itself under seeded noise."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency
from torch import nn

from kdlight.explain.metrics import AgreementMean
from kdlight.explain.metrics.stability import self_agreement, sensitivity

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


class Quadratic(nn.Module):
    """Logits ``(f, -f)`` with ``f = |x|^2 / 2``: the saliency of class 0 is ``x`` itself, whose sign
    and ranking flip under noise near ``x = 0``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 0.5 * (x**2).flatten(1).sum(1)
        return torch.stack([f, -f], dim=1)


def saliency_of(model: nn.Module):
    explainer = Saliency(model)
    return lambda x, t: explainer.attribute(x, target=t, abs=False)


class Recorder:
    """An explanation that returns its inputs (the saliency of :class:`Quadratic`) and keeps them."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.detach().clone()


def _data(n: int = 6, features: int = 8, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return scale * torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_a_linear_models_saliency_is_perfectly_stable():
    torch.manual_seed(0)
    explain = saliency_of(nn.Linear(8, 3))
    x, target = _data()
    assert sensitivity(explain, x, target, noise_scale=0.1, n_samples=5).tolist() == [0.0] * 6
    torch.testing.assert_close(self_agreement(explain, x, target, noise_scale=0.1, n_samples=3), torch.ones(6))
    top_k = self_agreement(explain, x, target, noise_scale=0.1, agreement="feature_agreement", k=3)
    assert top_k.tolist() == [1.0] * 6


def test_a_gradient_that_changes_sign_near_the_input_is_less_stable():
    explain = saliency_of(Quadratic())
    x, _ = _data(scale=0.01)  # the gradient x is as small as the noise
    assert (sensitivity(explain, x, 0, noise_scale=0.05, n_samples=5) > 1.0).all()
    agreement = self_agreement(explain, x, 0, noise_scale=0.05, n_samples=3)
    assert agreement.mean() < 0.5 and (agreement < 0.99).all()
    far, _ = _data(scale=10.0)  # far from the sign change the same noise barely moves the map
    assert (sensitivity(explain, far, 0, noise_scale=0.05, n_samples=5) < 0.05).all()
    assert (self_agreement(explain, far, 0, noise_scale=0.05, n_samples=3) > 0.9).all()


def test_sensitivity_is_captums_max_relative_change_over_the_drawn_noise():
    x, _ = _data(n=4)
    recorder = Recorder()
    scores = sensitivity(recorder, x, 0, noise_scale=0.2, n_samples=5)
    clean, perturbed = recorder.seen  # one call on x, one on the 5 perturbed copies of each sample
    torch.testing.assert_close(clean, x)
    delta = (perturbed - x.repeat_interleave(5, dim=0)).view(4, 5, -1)
    assert delta.abs().max() <= 0.2 and delta.abs().max() > 0.15
    expected = (delta.norm(dim=2) / x.norm(dim=1, keepdim=True)).amax(dim=1)
    torch.testing.assert_close(scores, expected)


def test_teacher_and_student_see_the_same_noise_and_the_global_rng_is_untouched():
    x, target = _data()
    teacher, student, other_seed = Recorder(), Recorder(), Recorder()
    state = torch.get_rng_state()
    for recorder, seed in ((teacher, 3), (student, 3), (other_seed, 4)):
        self_agreement(recorder, x, target, noise_scale=0.05, n_samples=2, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(teacher.seen) == 3  # the clean map, then one call per draw
    for a, b in zip(teacher.seen, student.seen, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(teacher.seen[1], other_seed.seen[1])
    assert not torch.equal(teacher.seen[1], teacher.seen[2])  # each draw is new noise


def test_works_under_inference_mode_as_in_trainer_validate():
    explain = saliency_of(nn.Linear(8, 3))
    x, target = _data()
    with torch.inference_mode():
        x_inf, t_inf = x.clone(), target.clone()
        scores = sensitivity(explain, x_inf, t_inf, n_samples=2)
        agreement = self_agreement(explain, x_inf, t_inf)
    assert scores.tolist() == [0.0] * 6
    torch.testing.assert_close(agreement, torch.ones(6))


def test_the_metric_class_averages_the_per_sample_scores():
    explain = saliency_of(Quadratic())
    x, _ = _data(scale=0.01)
    options = {"noise_scale": 0.05, "n_samples": 2, "seed": 1}
    metric = AgreementMean("sensitivity_max", options=options)
    metric.update(explain, x[:4], 0)
    metric.update(explain, x[4:], 0)
    expected = torch.cat([sensitivity(explain, x[:4], 0, **options), sensitivity(explain, x[4:], 0, **options)])
    assert metric.higher_is_better is False
    assert metric.compute().item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_settings_are_checked():
    x, target = _data()
    explain = Recorder()
    with pytest.raises(ValueError, match="floating-point inputs, got torch.int64"):
        sensitivity(explain, torch.ones(2, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="noise_scale must be a number > 0"):
        self_agreement(explain, x, target, noise_scale=0)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        sensitivity(explain, x, target, n_samples=0)
    with pytest.raises(ValueError, match=r"target must be an int or a tensor \[N\] = \[6\]"):
        self_agreement(explain, x, target[:2])
    with pytest.raises(ValueError, match="comparing two maps, got 'predictive_kl'"):
        self_agreement(explain, x, target, agreement="predictive_kl")
    with pytest.raises(ValueError, match="'feature_agreement' needs a top-k size k"):
        self_agreement(explain, x, target, agreement="feature_agreement")
    with pytest.raises(ValueError, match="unknown metric 'spearman'"):
        self_agreement(explain, x, target, agreement="spearman")
