"""Token-level LM objectives: values equal the functional divergences, padding never counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlight.core.schedules import LinearWarmup
from kdlight.core.step import DistillStep, total_loss
from kdlight.functional import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from kdlight.objectives import Composite
from kdlight.objectives.lm import GeneralizedJSD, NextTokenCE, SkewKL, TokenKL, TokenTVD

B, T, V = 3, 6, 11


def lm_step(labels: torch.Tensor | None = None, seed: int = 0) -> DistillStep:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=gen, requires_grad=True)
    teacher = torch.randn(B, T, V, generator=gen) * 2
    if labels is None:
        labels = torch.randint(1, V, (B, T), generator=gen)
        labels[:, -1] = -100  # last position: no next token
        labels[0, 3:] = -100  # first sequence padded after 4 tokens
    return DistillStep(inputs=torch.zeros(B, T, dtype=torch.long), target=None, student_logits=student,
                       teacher_logits=teacher, labels=labels)  # fmt: skip


CASES = [
    (TokenKL(), "fkl", lambda s, t, y: forward_kl(s, t, labels=y)),
    (TokenKL("reverse", temperature=2.0), "rkl", lambda s, t, y: reverse_kl(s, t, temperature=2.0, labels=y)),
    (GeneralizedJSD(beta=0.3), "jsd", lambda s, t, y: generalized_jsd(s, t, beta=0.3, labels=y)),
    (SkewKL(alpha=0.2), "skl", lambda s, t, y: skew_forward_kl(s, t, alpha=0.2, labels=y)),
    (SkewKL("reverse", alpha=0.1), "srkl", lambda s, t, y: skew_reverse_kl(s, t, alpha=0.1, labels=y)),
    (TokenTVD(), "tvd", lambda s, t, y: total_variation(s, t, labels=y)),
]


@pytest.mark.parametrize(("objective", "name", "reference"), CASES, ids=[c[1] for c in CASES])
def test_value_equals_the_functional_divergence(objective, name, reference):
    step = lm_step()
    (term,) = objective(step)
    assert term.name == name and term.weight == 1.0
    expected = reference(step.student_logits, step.teacher_logits, step.labels)
    torch.testing.assert_close(term.value, expected, rtol=0, atol=0)
    term.value.backward()
    assert step.student_logits.grad is not None and step.student_logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("objective", "name", "reference"), CASES, ids=[c[1] for c in CASES])
def test_ignored_positions_never_count(objective, name, reference):
    step = lm_step()
    (before,) = objective(step)
    ignored = step.labels == -100
    changed = lm_step(labels=step.labels)
    with torch.no_grad():  # change the logits only where the label is -100
        changed.student_logits[ignored] = torch.randn(int(ignored.sum()), V) * 5
        changed.teacher_logits[ignored] = torch.randn(int(ignored.sum()), V) * 5
    (after,) = objective(changed)
    torch.testing.assert_close(after.value, before.value)


def test_next_token_ce_equals_mean_token_nll_by_hand():
    step = lm_step()
    (term,) = NextTokenCE(weight=0.5)(step)
    counted = step.labels != -100
    log_p = torch.log_softmax(step.student_logits.double(), -1)
    nll = -log_p.gather(-1, step.labels.clamp(min=0)[..., None])[..., 0]
    assert term.name == "ce" and term.weight == 0.5
    torch.testing.assert_close(term.value.double(), nll[counted].mean(), rtol=1e-6, atol=1e-6)


def test_composite_sums_weighted_terms_and_keeps_names():
    step = lm_step()
    objective = Composite([TokenKL(weight=0.7), NextTokenCE(weight=0.3)])
    terms = objective(step)
    assert [t.name for t in terms] == ["fkl", "ce"]
    fkl = forward_kl(step.student_logits, step.teacher_logits, labels=step.labels)
    ce = F.cross_entropy(step.student_logits.flatten(0, 1), step.labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(total_loss(terms), 0.7 * fkl + 0.3 * ce)


def test_scheduled_weight_follows_the_step():
    step = lm_step()
    step.epoch = 1
    (term,) = TokenKL(weight=LinearWarmup(length=4))(step)
    assert term.scheduled and term.weight == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TokenKL("sideways"), "unknown direction 'sideways' in TokenKL; choose one of forward, reverse"),
        (lambda: SkewKL("up"), "unknown direction 'up' in SkewKL"),
        (lambda: GeneralizedJSD(beta=1.5), "beta must lie in [0, 1], got 1.5 in GeneralizedJSD"),
        (lambda: SkewKL(alpha=-0.1), "alpha must lie in [0, 1], got -0.1 in SkewKL"),
        (lambda: TokenTVD(temperature=0), "temperature must be > 0, got 0 in TokenTVD"),
        (lambda: NextTokenCE(weight=-1), "weight must be >= 0, got -1 in NextTokenCE"),
        (lambda: TokenKL(chunk_size=0), "chunk_size must be a positive number of positions, got 0 in TokenKL"),
    ],
)
def test_bad_arguments_are_one_line_errors(build, message):
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")) as error:
        build()
    assert "\n" not in str(error.value)


def test_a_step_without_labels_or_counted_positions_is_refused():
    step = lm_step()
    step.labels = None
    with pytest.raises(ValueError, match="TokenKL needs next-token labels, but the step has none"):
        TokenKL()(step)
    step.labels = torch.full((B, T), -100)
    with pytest.raises(ValueError, match="every label is -100"):
        NextTokenCE()(step)
    with pytest.raises(ValueError):
        TokenKL()(step)


def test_classifier_logits_are_refused():
    step = DistillStep(inputs=torch.zeros(4, 3), target=None, student_logits=torch.randn(4, 5),
                       teacher_logits=torch.randn(4, 5), labels=torch.zeros(4, 3, dtype=torch.long))  # fmt: skip
    with pytest.raises(ValueError, match=r"TokenTVD needs next-token logits \[B, T, V\] and labels \[B, T\]"):
        TokenTVD()(step)
