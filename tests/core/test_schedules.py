"""Schedules for loss weights and temperatures."""

from __future__ import annotations

import math

import pytest
import torch

from kdlight.core.schedules import Constant, Cosine, LinearWarmup, resolve
from kdlight.core.step import DistillStep
from kdlight.functional.distillation import kd_loss
from kdlight.objectives import DKD, KD


def test_linear_warmup_matches_dkd_reference_and_units():
    warmup = LinearWarmup(length=20)
    assert [warmup.at(e, 0) for e in (0, 9, 19, 100)] == pytest.approx([0.05, 0.5, 1.0, 1.0])
    by_step = LinearWarmup(length=4, start=1.0, end=3.0, unit="step")
    assert [by_step.at(99, s) for s in (0, 1, 3)] == pytest.approx([1.5, 2.0, 3.0])


def test_cosine_and_constant():
    cosine = Cosine(length=10, start=4.0, end=1.0)
    assert cosine.at(0, 0) == pytest.approx(4.0) and cosine.at(10, 0) == pytest.approx(1.0)
    assert cosine.at(5, 0) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert Constant(2.5).at(7, 7) == 2.5 and resolve(3.0, 1, 1) == 3.0


def test_bad_schedules():
    with pytest.raises(ValueError, match="unit must be 'epoch' or 'step'"):
        Constant(1.0, unit="batch")
    with pytest.raises(ValueError, match="length must be >= 1"):
        LinearWarmup(length=0)


def step_at(epoch: int) -> DistillStep:
    g = torch.Generator().manual_seed(0)
    return DistillStep(
        inputs=torch.zeros(4, 2),
        target=torch.tensor([0, 1, 2, 0]),
        student_logits=torch.randn(4, 3, generator=g),
        teacher_logits=torch.randn(4, 3, generator=g),
        epoch=epoch,
    )


def test_kd_with_a_temperature_schedule_uses_the_current_temperature():
    objective = KD(temperature=Cosine(length=10, start=8.0, end=2.0), alpha=1.0)
    for epoch, temperature in ((0, 8.0), (10, 2.0)):
        step = step_at(epoch)
        (term,) = objective(step)
        assert torch.allclose(term.value, kd_loss(step.student_logits, step.teacher_logits, temperature))


def test_temperature_schedule_reaching_zero_is_an_error():
    objective = KD(temperature=Cosine(length=2, start=4.0, end=0.0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        objective(step_at(5))


def test_dkd_warmup_is_a_schedule_and_is_flagged_for_logging():
    terms = {t.name: t for t in DKD(warmup_epochs=20)(step_at(4))}
    assert terms["dkd"].weight == pytest.approx(0.25) and terms["dkd"].scheduled and not terms["ce"].scheduled
    custom = {t.name: t for t in DKD(warmup=Constant(0.5))(step_at(0))}
    assert custom["dkd"].weight == 0.5
