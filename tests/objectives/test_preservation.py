"""ExplanationPreservation: value, which model is the reference, the frozen copy, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlight.core.step import DistillStep
from kdlight.objectives.preservation import ExplanationPreservation


def small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


def make_step(student: nn.Module, teacher: nn.Module) -> DistillStep:
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        t_logits = teacher(x)
    return DistillStep(
        inputs=x, target=None, student_logits=student(x), teacher_logits=t_logits, student=student, teacher=teacher
    )


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad


def test_dense_reference_is_a_frozen_copy_taken_before_compression():
    student, teacher = small_cnn(1), small_cnn(0).requires_grad_(False)
    objective = ExplanationPreservation(reference="dense_student", kind="saliency", weight=3.0)
    objective.capture_reference(student)  # what the pruning callbacks do before they prune
    dense = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        student[0].weight[:2] = 0  # "compress" the student
    step = make_step(student, teacher)
    (term,) = objective(step)
    target = step.teacher_logits.argmax(-1)
    reference = small_cnn(1)
    reference.load_state_dict(dense)
    e_ref, e_s = saliency(reference, step.inputs, target), saliency(student, step.inputs, target)
    expected = (1 - F.cosine_similarity(e_s.flatten(1), e_ref.flatten(1), dim=1)).mean()
    assert term.name == "preserve" and term.weight == 3.0
    assert torch.allclose(term.value, expected, atol=1e-6)
    term.value.backward()
    assert student[0].weight.grad is not None and student[0].weight.grad.abs().sum() > 0
    assert list(objective.parameters()) == [] and objective.state_dict() == {}  # never optimised or saved
    assert all(not p.requires_grad and p.grad is None for p in objective.reference_model.parameters())


def test_uncompressed_student_has_zero_loss_and_teacher_reference_reads_the_teacher():
    student, teacher = small_cnn(1), small_cnn(0).requires_grad_(False)
    (term,) = ExplanationPreservation(reference="dense_student", kind="input_x_gradient")(make_step(student, teacher))
    assert term.value.item() == pytest.approx(0.0, abs=1e-5)
    step = make_step(student, teacher)
    (term,) = ExplanationPreservation(reference="teacher")(step)
    target = step.teacher_logits.argmax(-1)
    e_t, e_s = saliency(teacher, step.inputs, target), saliency(student, step.inputs, target)
    assert torch.allclose(
        term.value, (1 - F.cosine_similarity(e_s.flatten(1), e_t.flatten(1), dim=1)).mean(), atol=1e-6
    )


def test_checkpoint_reference_loads_those_weights(tmp_path):
    student, teacher = small_cnn(1), small_cnn(0).requires_grad_(False)
    torch.save(small_cnn(7).state_dict(), tmp_path / "dense.pt")
    objective = ExplanationPreservation(reference=str(tmp_path / "dense.pt"))
    objective(make_step(student, teacher))
    assert all(
        torch.equal(a, b)
        for a, b in zip(objective.reference_model.state_dict().values(), small_cnn(7).state_dict().values())
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"kind": "lime"}, "unknown explanation kind 'lime'; valid kinds are:"),
        ({"weight": -1.0}, "weight must be >= 0"),
        ({"n_steps": 0}, "n_steps must be an integer >= 1"),
        ({"reference": ""}, "reference must be teacher, dense_student or a checkpoint path"),
    ],
)
def test_bad_settings_are_one_line(args, words):
    with pytest.raises(ValueError) as err:
        ExplanationPreservation(**args)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_reference_checkpoint_is_one_line(tmp_path):
    objective = ExplanationPreservation(reference=str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="reference_checkpoint .* does not exist"):
        objective.capture_reference(small_cnn(1))
