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


# ------------------------------------------------------------------------------------------
# token inputs: e2KD on token maps and AD-KD
# ------------------------------------------------------------------------------------------
class TokenBag(nn.Module):
    """Token ids -> mean of the real tokens' embeddings -> tanh -> linear (pads excluded)."""

    pad_token_id = 0

    def __init__(self, seed: int, dim: int = 6, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head = nn.Embedding(30, dim, padding_idx=0), nn.Linear(dim, classes)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = (ids != 0).unsqueeze(-1)
        return self.head(torch.tanh((self.emb(ids) * valid).sum(1) / valid.sum(1).clamp(min=1)))


def token_step(student_seed: int = 1) -> DistillStep:
    teacher, student = TokenBag(0, dim=8).requires_grad_(False), TokenBag(student_seed)
    ids = torch.randint(1, 30, (5, 6), generator=torch.Generator().manual_seed(0))
    ids[1, 4:], ids[3, 1:] = 0, 0
    with torch.no_grad():
        t_logits = teacher(ids)
    return DistillStep(
        inputs=ids,
        target=None,
        student_logits=student(ids),
        teacher_logits=t_logits,
        student=student,
        teacher=teacher,
        attention_mask=ids != 0,
    )


def closed_form_saliency(model: TokenBag, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The L2 norm over the hidden units of d logit_c / d e_i: ||W_c * (1 - tanh(pooled)^2)|| / n_real."""
    with torch.no_grad():
        valid = (ids != 0).float()
        pooled = (model.emb(ids) * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True)
        per_sample = (model.head.weight[target] * (1 - torch.tanh(pooled) ** 2)).norm(dim=1, keepdim=True)
        return per_sample * valid / valid.sum(1, keepdim=True)


def test_token_explanation_matching_compares_real_positions():
    step = token_step()
    objective = ExplanationMatching("saliency")
    e_t, e_s = objective.maps(step)
    target = step.teacher_logits.argmax(-1)
    torch.testing.assert_close(e_t, closed_form_saliency(step.teacher, step.inputs, target))
    torch.testing.assert_close(e_s.detach(), closed_form_saliency(step.student, step.inputs, target))
    (term,) = objective(step)
    real = step.attention_mask
    expected = torch.stack(
        [1 - F.cosine_similarity(e_s[i][real[i]], e_t[i][real[i]], dim=0) for i in range(len(real))]
    ).mean()
    torch.testing.assert_close(term.value, expected)
    term.value.backward()
    assert step.student.emb.weight.grad.abs().sum() > 0 and step.student.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="grad_cam cannot explain token ids"):
        ExplanationMatching("grad_cam")(step)


def captum_ig(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Integrated gradients by Captum (midpoint rule): at the embeddings from PAD for token ids
    (summed over the hidden units), on the inputs from zeros otherwise."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    if inputs.is_floating_point():
        ig = IntegratedGradients(model)
        return ig.attribute(inputs, target=target, n_steps=n_steps, method="riemann_middle").detach()
    lig = LayerIntegratedGradients(model, model.get_input_embeddings())
    baselines = torch.zeros_like(inputs)
    return lig.attribute(inputs, baselines, target=target, n_steps=n_steps, method="riemann_middle").sum(-1).detach()


def adkd_reference(step: DistillStep, top_k: int, n_steps: int) -> torch.Tensor:
    """AD-KD's loss from its definition, one view at a time, with Captum's maps."""
    views = step.teacher_logits.topk(min(top_k, step.teacher_logits.shape[1]), dim=1).indices
    total = torch.zeros(step.inputs.shape[0])
    for v in range(views.shape[1]):
        a_t = captum_ig(step.teacher, step.inputs, views[:, v], n_steps).flatten(1)
        a_s = captum_ig(step.student, step.inputs, views[:, v], n_steps).flatten(1)
        total += (a_t / a_t.norm(dim=1, keepdim=True) - a_s / a_s.norm(dim=1, keepdim=True)).norm(dim=1)
    return total.mean()


@pytest.mark.parametrize("top_k", [2, 9])
def test_attribution_distillation_on_tokens_matches_its_definition(top_k):
    from kdlight.objectives.explanation import AttributionDistillation

    step = token_step()
    objective = AttributionDistillation(weight=0.5, top_k=top_k, n_steps=4)
    (term,) = objective(step)
    assert term.name == "attribution" and term.weight == 0.5
    torch.testing.assert_close(term.value.detach(), adkd_reference(step, top_k, 4), rtol=1e-4, atol=1e-5)
    term.value.backward()
    assert step.student.emb.weight.grad.abs().sum() > 0 and step.student.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in step.teacher.parameters())


def test_attribution_distillation_on_float_inputs_and_identical_models():
    from kdlight.objectives.explanation import AttributionDistillation

    step = make_step()
    (term,) = AttributionDistillation(top_k=3, n_steps=4)(step)
    torch.testing.assert_close(term.value.detach(), adkd_reference(step, 3, 4), rtol=1e-4, atol=1e-5)
    same = token_step()
    same.student.load_state_dict(TokenBag(0, dim=6).state_dict())
    same.teacher = TokenBag(0, dim=6).requires_grad_(False)
    (term,) = AttributionDistillation(n_steps=2)(same)
    assert term.value.item() == pytest.approx(0.0, abs=1e-6)
    term.value.backward()
    assert all(torch.isfinite(p.grad).all() for p in same.student.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0 in AttributionDistillation"):
        AttributionDistillation(top_k=0)
