"""MultiTeacherKD against float64 NumPy hand computations of the two multi-teacher losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlight.core.schedules import Cosine
from kdlight.core.step import DistillStep, total_loss
from kdlight.objectives import KD
from kdlight.objectives.multi_teacher import MultiTeacherKD, averaged_kd_loss

B, C = 6, 5


def make_step(num_teachers=3, labeled=True, epoch=0, scale=3.0, dtype=torch.float32) -> DistillStep:
    g = torch.Generator().manual_seed(0)
    members = [scale * torch.randn(B, C, generator=g, dtype=dtype) for _ in range(num_teachers)]
    return DistillStep(
        inputs=torch.randn(B, 3, generator=g),
        target=torch.randint(0, C, (B,), generator=g) if labeled else None,
        student_logits=(scale * torch.randn(B, C, generator=g, dtype=dtype)).requires_grad_(),
        teacher_logits=torch.stack(members).mean(0),  # what a TeacherEnsemble returns
        teacher_features={f"members.{i}": t for i, t in enumerate(members)},
        epoch=epoch,
    )


# -- independent float64 NumPy references --------------------------------------------------------


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, summed over classes."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def np_average_kd(student: np.ndarray, teachers: list[np.ndarray], T: float) -> float:
    p_avg = np.mean([np_softmax(t / T) for t in teachers], axis=0)
    return float(np_kl_rows(p_avg, np_softmax(student / T)).mean() * T * T)


def np_kd(student: np.ndarray, teacher: np.ndarray, T: float) -> float:
    return float(np_kl_rows(np_softmax(teacher / T), np_softmax(student / T)).mean() * T * T)


def np_ce(student: np.ndarray, target: np.ndarray) -> float:
    p = np_softmax(student)
    return float(-np.log(p[np.arange(len(target)), target]).mean())


def arrays(step: DistillStep):
    s = step.student_logits.detach().double().numpy()
    teachers = [step.teacher_features[f"members.{i}"].double().numpy() for i in range(len(step.teacher_features))]
    return s, teachers, step.target.numpy() if step.target is not None else None


def by_name(terms):
    return {t.name: t for t in terms}


# -- mode "average" ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_average_mode_is_kl_to_the_mean_of_the_softened_teacher_distributions(temperature):
    step = make_step()
    terms = by_name(MultiTeacherKD(num_teachers=3, temperature=temperature, alpha=0.7)(step))
    assert set(terms) == {"ce", "kd"}
    s, teachers, y = arrays(step)
    assert terms["kd"].weight == pytest.approx(0.7) and terms["ce"].weight == pytest.approx(0.3)
    assert terms["kd"].value.item() == pytest.approx(np_average_kd(s, teachers, temperature), rel=1e-5)
    assert terms["ce"].value.item() == pytest.approx(np_ce(s, y), rel=1e-5)
    expected_total = 0.3 * np_ce(s, y) + 0.7 * np_average_kd(s, teachers, temperature)
    assert total_loss(list(terms.values())).item() == pytest.approx(expected_total, rel=1e-5)


def test_average_mode_in_float64_matches_to_many_digits():
    step = make_step(dtype=torch.float64)
    s, teachers, _ = arrays(step)
    value = averaged_kd_loss(step.student_logits, [torch.from_numpy(t) for t in teachers], 2.0)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(np_average_kd(s, teachers, 2.0), rel=1e-12)


def test_average_of_distributions_is_not_kd_on_the_mean_logits():
    step = make_step(scale=5.0)
    s, teachers, _ = arrays(step)
    kd = by_name(MultiTeacherKD(num_teachers=3, temperature=2.0)(step))["kd"].value.item()
    on_mean_logits = np_kd(s, np.mean(teachers, axis=0), 2.0)
    assert abs(kd - on_mean_logits) > 1e-3
    assert kd == pytest.approx(np_average_kd(s, teachers, 2.0), rel=1e-5)


def test_one_teacher_average_equals_hinton_kd():
    step = make_step(num_teachers=1)
    multi = by_name(MultiTeacherKD(num_teachers=1, temperature=3.0, alpha=0.8)(step))
    single = by_name(KD(temperature=3.0, alpha=0.8)(step))
    assert multi.keys() == single.keys()
    for name in multi:
        assert multi[name].weight == pytest.approx(single[name].weight)
        assert torch.allclose(multi[name].value, single[name].value, rtol=1e-6, atol=1e-7)


def test_identical_teachers_and_student_give_zero_kd():
    step = make_step(num_teachers=2)
    same = step.teacher_features["members.0"]
    step.teacher_features["members.1"] = same.clone()
    step.student_logits = same.clone().requires_grad_()
    assert by_name(MultiTeacherKD(num_teachers=2)(step))["kd"].value.item() == pytest.approx(0.0, abs=1e-6)


# -- mode "each" ------------------------------------------------------------------------------------


def test_each_mode_has_one_kd_term_per_teacher_weighted_alpha_over_n():
    step = make_step(num_teachers=3)
    terms = by_name(MultiTeacherKD(num_teachers=3, temperature=4.0, alpha=0.9, mode="each")(step))
    assert set(terms) == {"ce", "kd_0", "kd_1", "kd_2"}
    s, teachers, y = arrays(step)
    for i, t in enumerate(teachers):
        assert terms[f"kd_{i}"].weight == pytest.approx(0.9 / 3)
        assert terms[f"kd_{i}"].value.item() == pytest.approx(np_kd(s, t, 4.0), rel=1e-5)
    assert terms["ce"].weight == pytest.approx(0.1)
    expected_total = 0.1 * np_ce(s, y) + sum(0.3 * np_kd(s, t, 4.0) for t in teachers)
    assert total_loss(list(terms.values())).item() == pytest.approx(expected_total, rel=1e-5)
    assert not any(t.scheduled for t in terms.values())


def test_each_mode_terms_differ_per_teacher():
    terms = MultiTeacherKD(num_teachers=2, mode="each")(make_step(num_teachers=2))
    kd = [t.value.item() for t in terms if t.name.startswith("kd_")]
    assert len(kd) == 2 and kd[0] != pytest.approx(kd[1])


# -- shared behaviour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["average", "each"])
def test_gradients_reach_the_student_logits_only(mode):
    step = make_step()
    loss = total_loss(MultiTeacherKD(num_teachers=3, mode=mode)(step))
    loss.backward()
    assert step.student_logits.grad is not None and torch.isfinite(step.student_logits.grad).all()
    assert all(not t.requires_grad for t in step.teacher_features.values())


@pytest.mark.parametrize("mode", ["average", "each"])
def test_alpha_one_or_unlabeled_batches_have_no_ce_term(mode):
    assert "ce" not in by_name(MultiTeacherKD(num_teachers=3, alpha=1.0, mode=mode)(make_step()))
    assert "ce" not in by_name(MultiTeacherKD(num_teachers=3, alpha=0.5, mode=mode)(make_step(labeled=False)))


def test_temperature_schedule_is_evaluated_at_the_step_epoch():
    schedule = Cosine(length=10, start=8.0, end=2.0)
    step = make_step(epoch=5)
    t = schedule.at(5, 0)  # 5.0: half-way down the cosine
    assert t == pytest.approx(5.0)
    kd = by_name(MultiTeacherKD(num_teachers=3, temperature=schedule)(step))["kd"].value.item()
    s, teachers, _ = arrays(step)
    assert kd == pytest.approx(np_average_kd(s, teachers, t), rel=1e-5)


def test_teacher_layers_name_the_ensemble_members():
    assert MultiTeacherKD(num_teachers=3).teacher_layers == ["members.0", "members.1", "members.2"]
    assert MultiTeacherKD(num_teachers=3).student_layers == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_teachers": 0}, "num_teachers must be an integer >= 1"),
        ({"num_teachers": 2.0}, "num_teachers must be an integer >= 1"),
        ({"num_teachers": 2, "mode": "max"}, "mode must be one of average, each"),
        ({"num_teachers": 2, "temperature": 0.0}, "temperature must be > 0"),
        ({"num_teachers": 2, "alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiTeacherKD(**kwargs)


def test_missing_member_features_say_what_teacher_is_needed():
    step = make_step(num_teachers=2)
    with pytest.raises(ValueError, match=r"no teacher features \['members.2'\].*TeacherEnsemble"):
        MultiTeacherKD(num_teachers=3)(step)


def test_build_checks_member_count_and_logit_shapes():
    from torch import nn

    from kdlight.models.ensemble import TeacherEnsemble

    step = make_step(num_teachers=2)
    step.teacher = TeacherEnsemble([nn.Linear(3, C), nn.Linear(3, C)])
    MultiTeacherKD(num_teachers=2).build(step)  # fine
    with pytest.raises(ValueError, match=r"num_teachers=3\) but the teacher ensemble has 2 members"):
        MultiTeacherKD(num_teachers=3).build(step)
    step.teacher_features["members.1"] = torch.zeros(B, C + 1)
    with pytest.raises(ValueError, match=r"teacher members.1 outputs shape \(6, 6\)"):
        MultiTeacherKD(num_teachers=2).build(step)
