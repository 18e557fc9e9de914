"""Every objective refuses a silently-wrong argument at construction with one clear line."""

from __future__ import annotations

import math
import re

import pytest
import torch

from kdlight.core.schedules import Constant, Cosine, LinearWarmup, Schedule
from kdlight.core.step import DistillStep
from kdlight.objectives import (
    DKD,
    KD,
    PKT,
    RKD,
    AttentionTransfer,
    Composite,
    CrossEntropy,
    ExplanationMatching,
    Hint,
    MultiTeacherKD,
)
from kdlight.objectives.base import check_arg

NEG = -0.5


def hint(**kw):
    return Hint("f", "f", **kw)


def at(**kw):
    return AttentionTransfer(**{"student_layers": ["a"], "teacher_layers": ["b"], **kw})


def mt(**kw):
    return MultiTeacherKD(**{"num_teachers": 2, **kw})


def composite(**kw):
    return Composite(**{"terms": [KD(), AttentionTransfer(["a"], ["b"])], **kw})


# (objective, kwargs, argument named in the message)
BAD = [
    (CrossEntropy, {"weight": NEG}, "weight"),
    (CrossEntropy, {"weight": LinearWarmup(5, start=NEG)}, "weight"),
    (CrossEntropy, {"label_smoothing": -0.1}, "label_smoothing"),
    (CrossEntropy, {"label_smoothing": 1.5}, "label_smoothing"),
    (KD, {"alpha": -0.1}, "alpha"),
    (KD, {"alpha": 1.5}, "alpha"),
    (KD, {"temperature": 0.0}, "temperature"),
    (KD, {"temperature": -2.0}, "temperature"),
    (KD, {"temperature": Constant(0.0)}, "temperature"),
    (KD, {"temperature": Cosine(10, start=4.0, end=-1.0)}, "temperature"),
    (KD, {"temperature": LinearWarmup(10, start=-1.0, end=4.0)}, "temperature"),
    (DKD, {"alpha": NEG}, "alpha"),
    (DKD, {"beta": NEG}, "beta"),
    (DKD, {"ce_weight": NEG}, "ce_weight"),
    (DKD, {"ce_weight": Cosine(10, start=1.0, end=NEG)}, "ce_weight"),
    (DKD, {"temperature": 0.0}, "temperature"),
    (DKD, {"warmup": Constant(NEG)}, "warmup"),
    (DKD, {"warmup_epochs": -1}, "warmup_epochs"),
    (hint, {"weight": NEG}, "weight"),
    (hint, {"weight": Constant(NEG)}, "weight"),
    (at, {"weight": NEG}, "weight"),
    (at, {"student_layers": [], "teacher_layers": []}, "student_layers"),
    (at, {"student_layers": ["a"], "teacher_layers": ["a", "b"]}, "student_layers"),
    (RKD, {"weight": NEG}, "weight"),
    (RKD, {"distance_weight": NEG}, "distance_weight"),
    (RKD, {"angle_weight": NEG}, "angle_weight"),
    (PKT, {"weight": NEG}, "weight"),
    (PKT, {"weight": LinearWarmup(3, start=0.0, end=NEG)}, "weight"),
    (ExplanationMatching, {"weight": NEG}, "weight"),
    (ExplanationMatching, {"n_steps": 0}, "n_steps"),
    (mt, {"alpha": -0.1}, "alpha"),
    (mt, {"alpha": 1.5}, "alpha"),
    (mt, {"temperature": 0.0}, "temperature"),
    (mt, {"temperature": Cosine(5, start=-1.0, end=4.0)}, "temperature"),
    (composite, {"scale": [1.0, NEG]}, "scale[1]"),
    (composite, {"scale": [1.0]}, "scale"),
    (composite, {"terms": []}, "terms"),
]


def owner_name(factory) -> str:
    return {hint: "Hint", at: "AttentionTransfer", mt: "MultiTeacherKD", composite: "Composite"}.get(
        factory, getattr(factory, "__name__", "")
    )


def case_id(case) -> str:
    factory, kwargs, _ = case
    return f"{owner_name(factory)}-" + "-".join(
        f"{k}={type(v).__name__ if isinstance(v, Schedule) else v}" for k, v in kwargs.items()
    )


@pytest.mark.parametrize(("factory", "kwargs", "argument"), BAD, ids=[case_id(c) for c in BAD])
def test_bad_argument_is_a_one_line_error_naming_it(factory, kwargs, argument):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    # "<argument> must <range>, got <value> in <Objective>; <fix>"
    assert re.fullmatch(rf"{re.escape(argument)}( and \w+)? must .+, got .+ in {owner_name(factory)}; \S.+", message), (
        message
    )


def test_messages_read_as_documented():
    cases = {
        lambda: Hint("f", "f", weight=-1.0): (
            "weight must be >= 0, got -1.0 in Hint; use 0 to turn the term off (a negative weight would maximise its loss)"
        ),
        lambda: KD(alpha=1.5): (
            "alpha must lie in [0, 1], got 1.5 in KD; alpha is the share of the KD term and 1 - alpha that of the CE term (0.9 is usual)"
        ),
        lambda: KD(temperature=0.0): "temperature must be > 0, got 0.0 in KD; KD papers use 1-8 (4 is usual)",
        lambda: CrossEntropy(label_smoothing=1.5): (
            "label_smoothing must lie in [0, 1], got 1.5 in CrossEntropy; 0 turns label smoothing off, 0.1 is usual"
        ),
        lambda: DKD(ce_weight=LinearWarmup(5, start=-1.0)): (
            "ce_weight must be >= 0, got LinearWarmup with start=-1.0 in DKD; use 0 to turn the term off (a negative weight would maximise its loss)"
        ),
        lambda: RKD(weight=math.inf): (
            "weight must be a finite number >= 0, got inf in RKD; use 0 to turn the term off (a negative weight would maximise its loss)"
        ),
    }
    for build, expected in cases.items():
        with pytest.raises(ValueError) as info:
            build()
        assert str(info.value) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0x"])
def test_non_finite_or_non_numeric_weights_are_refused(bad):
    with pytest.raises(ValueError, match=r"^weight must .* in PKT; "):
        PKT(weight=bad)


# Valid edge values construct fine: zero weights (a term turned off), the ends of [0, 1].
GOOD = [
    (CrossEntropy, {"weight": 0.0}),
    (CrossEntropy, {"label_smoothing": 0.0}),
    (CrossEntropy, {"label_smoothing": 1.0}),
    (CrossEntropy, {"weight": LinearWarmup(5)}),  # from 0 to 1
    (KD, {"alpha": 0.0}),
    (KD, {"alpha": 1.0}),
    (KD, {"alpha": 1}),
    (KD, {"temperature": 1e-3}),
    (KD, {"temperature": LinearWarmup(10, start=0.0, end=4.0)}),  # never takes its start
    (KD, {"temperature": Cosine(10, start=8.0, end=2.0)}),
    (DKD, {"alpha": 0.0, "beta": 0.0, "ce_weight": 0.0, "warmup_epochs": 0}),
    (DKD, {"ce_weight": Cosine(10, start=1.0, end=0.0), "warmup": Constant(0.0)}),
    (hint, {"weight": 0.0}),
    (hint, {"weight": Cosine(10, start=100.0, end=0.0)}),
    (at, {"weight": 0.0}),
    (RKD, {"weight": 0.0, "distance_weight": 0.0, "angle_weight": 0.0}),
    (PKT, {"weight": 0.0}),
    (ExplanationMatching, {"weight": 0.0}),
    (mt, {"alpha": 0.0}),
    (mt, {"alpha": 1.0}),
    (composite, {"scale": [0.0, 2.0]}),
]


@pytest.mark.parametrize(("factory", "kwargs"), GOOD, ids=[case_id((*c, None)) for c in GOOD])
def test_valid_edge_values_construct(factory, kwargs):
    factory(**kwargs)


def test_numbers_become_floats_and_schedules_stay_as_given():
    schedule = LinearWarmup(5)
    assert Hint("f", "f", weight=schedule).weight is schedule
    objective = RKD(distance_weight=25, angle_weight=0)
    assert (objective.distance_weight, objective.angle_weight) == (25.0, 0.0)
    assert isinstance(objective.distance_weight, float) and check_arg("X", "w", 3) == 3.0


class GoesNegative(Schedule):
    """A custom schedule without start/end: only the value at a step can be checked."""

    def value(self, t: int) -> float:
        return 1.0 - t


def test_a_scheduled_weight_that_goes_negative_is_refused_at_that_step():
    objective = PKT(student_layer=None, teacher_layer=None, weight=GoesNegative())
    g = torch.Generator().manual_seed(0)

    def step(epoch):
        return DistillStep(
            inputs=torch.randn(4, 3, generator=g),
            target=None,
            student_logits=torch.randn(4, 5, generator=g),
            teacher_logits=torch.randn(4, 5, generator=g),
            student_features={},
            teacher_features={},
            epoch=epoch,
        )

    (term,) = objective(step(1))
    assert term.weight == 0.0
    with pytest.raises(ValueError, match=r"^weight must be >= 0, got -1.0 in term 'pkt' at epoch 2, step 0; keep"):
        objective(step(2))
