"""The explanation-matching term (e2KD): value, gradients and validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlight.core.step import DistillStep
from kdlight.objectives import ExplanationMatching


def small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


def make_step():
    teacher, student = small_cnn(0).requires_grad_(False), small_cnn(1)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        t_logits = teacher(x)
    return DistillStep(
        inputs=x, target=None, student_logits=student(x), teacher_logits=t_logits, student=student, teacher=teacher
    )


@pytest.mark.parametrize("kind", ["saliency", "input_x_gradient", "grad_cam", "integrated_gradients"])
def test_term_is_one_minus_cosine_and_trains_the_student(kind):
    step = make_step()
    objective = ExplanationMatching(kind=kind, weight=2.0, n_steps=4)
    (term,) = objective(step)
    assert term.name == "explain" and term.weight == 2.0
    e_t, e_s = objective.maps(step)
    expected = (1 - F.cosine_similarity(e_s.flatten(1), e_t.flatten(1), dim=1)).mean()
    assert torch.allclose(term.value, expected, atol=1e-6)
    assert 0.0 <= term.value.item() <= 2.0
    term.value.backward()
    # weights shape the map (biases of a ReLU net may not: d logit / dx ignores the last bias)
    weights = [p for name, p in step.student.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    assert all(p.grad is None for p in step.teacher.parameters())


def test_saliency_map_matches_manual_gradient():
    step = make_step()
    e_t, _ = ExplanationMatching("saliency").maps(step)
    x = step.inputs.clone().requires_grad_()
    target = step.teacher_logits.argmax(-1)
    (grad,) = torch.autograd.grad(step.teacher(x).gather(1, target[:, None]).sum(), x)
    assert torch.allclose(e_t, grad, atol=1e-6)


def test_identical_models_give_zero_loss():
    step = make_step()
    step.student.load_state_dict(step.teacher.state_dict())
    (term,) = ExplanationMatching("input_x_gradient")(step)
    assert term.value.item() == pytest.approx(0.0, abs=1e-5)


def test_bad_kind_and_missing_models():
    with pytest.raises(ValueError, match="unknown explanation kind 'lime'; valid kinds are: saliency"):
        ExplanationMatching("lime")
    step = make_step()
    step.student = None
    with pytest.raises(ValueError, match="needs the models"):
        ExplanationMatching()(step)
