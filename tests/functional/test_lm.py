"""Token-level LM divergences (kdlight.functional.lm) against float64 references from the published definitions.

The references below work in probability space with plain formulas and an explicit loop over counted
positions; kdlight works in log space, chunk by chunk, with a custom backward. Gradients are compared with
autograd of the references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlight.functional import (
    default_chunk_size,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    topk_forward_kl,
    topk_logprobs,
    total_variation,
)

B, T, V = 3, 5, 13


# --------------------------------------------------------------------------- float64 references


def ref_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.double() / temperature
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * torch.log(p / q)).sum(-1)


def ref_per_token(name: str, ps: torch.Tensor, pt: torch.Tensor, param: float) -> torch.Tensor:
    if name == "forward_kl":
        return ref_kl(pt, ps)
    if name == "reverse_kl":
        return ref_kl(ps, pt)
    if name == "generalized_jsd":  # GKD eq. 1; TRL's special cases at the ends
        if param == 0:
            return ref_kl(pt, ps)
        if param == 1:
            return ref_kl(ps, pt)
        m = param * pt + (1 - param) * ps
        return param * ref_kl(pt, m) + (1 - param) * ref_kl(ps, m)
    if name == "skew_forward_kl":
        return ref_kl(pt, param * pt + (1 - param) * ps)
    if name == "skew_reverse_kl":
        return ref_kl(ps, (1 - param) * pt + param * ps)
    return 0.5 * (pt - ps).abs().sum(-1)


def ref_loss(name, student, teacher, counted, temperature=1.0, param=0.5):
    values = ref_per_token(name, ref_probs(student, temperature), ref_probs(teacher, temperature), param)
    total, count = 0.0, 0
    for b in range(counted.shape[0]):
        for t in range(counted.shape[1]):
            if counted[b, t]:
                total = total + values[b, t]
                count += 1
    return total / count


LOSSES = {
    "forward_kl": lambda s, t, m, tau, p, **kw: forward_kl(s, t, m, tau, **kw),
    "reverse_kl": lambda s, t, m, tau, p, **kw: reverse_kl(s, t, m, tau, **kw),
    "generalized_jsd": lambda s, t, m, tau, p, **kw: generalized_jsd(s, t, m, p, tau, **kw),
    "skew_forward_kl": lambda s, t, m, tau, p, **kw: skew_forward_kl(s, t, m, p, tau, **kw),
    "skew_reverse_kl": lambda s, t, m, tau, p, **kw: skew_reverse_kl(s, t, m, p, tau, **kw),
    "total_variation": lambda s, t, m, tau, p, **kw: total_variation(s, t, m, tau, **kw),
}
CASES = [
    ("forward_kl", 0.0),
    ("reverse_kl", 0.0),
    ("generalized_jsd", 0.0),
    ("generalized_jsd", 0.3),
    ("generalized_jsd", 1.0),
    ("skew_forward_kl", 0.1),
    ("skew_forward_kl", 0.7),
    ("skew_reverse_kl", 0.1),
    ("skew_reverse_kl", 0.7),
    ("total_variation", 0.0),
]


def make(seed: int = 0, dtype=torch.float32, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(B, T, V, generator=g) * scale).to(dtype)
    teacher = (torch.randn(B, T, V, generator=g) * scale).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100  # prompt / padding
    labels[2, 4] = -100
    return student, teacher, labels


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize(("name", "param"), CASES)
@pytest.mark.parametrize("by", ["mask", "labels"])
def test_values_match_float64_reference(name, param, by):
    student, teacher, labels = make()
    counted = labels != -100
    kw = {"labels": labels} if by == "labels" else {}
    mask = counted if by == "mask" else None
    got = LOSSES[name](student, teacher, mask, 2.0, param, chunk_size=4, **kw)
    want = ref_loss(name, student, teacher, counted, 2.0, param)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "param"), CASES)
def test_gradients_match_float64_reference(name, param):
    student, teacher, labels = make(1, torch.float64)
    counted = labels != -100
    mine = student.clone().requires_grad_()
    theirs = student.clone().requires_grad_()
    got = LOSSES[name](mine, teacher, counted, 1.5, param, chunk_size=2)
    want = ref_loss(name, theirs, teacher, counted, 1.5, param)
    got.backward()
    want.backward()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-13)
    assert mine.grad[~counted].abs().max() == 0  # padding never counts


def test_teacher_gradient_matches_reference_when_requested():
    student, teacher, labels = make(2, torch.float64)
    mine, theirs = teacher.clone().requires_grad_(), teacher.clone().requires_grad_()
    generalized_jsd(student, mine, labels=labels, beta=0.3, chunk_size=5).backward()
    ref_loss("generalized_jsd", student, theirs, labels != -100, 1.0, 0.3).backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", list(LOSSES))
def test_chunked_equals_unchunked(name):
    student, teacher, labels = make(3)
    results = []
    for chunk in (1, 4, None, B * T):
        s = student.clone().requires_grad_()
        value = LOSSES[name](s, teacher, None, 1.0, 0.3, labels=labels, chunk_size=chunk)
        value.backward()
        results.append((value, s.grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-8)


def test_default_chunk_size_follows_vocabulary():
    assert default_chunk_size(32_000) == 131
    assert default_chunk_size(10**9) == 1
    assert default_chunk_size(8) == 2**19


def test_generalized_jsd_equals_trl_formula():
    """TRL GKDTrainer.generalized_jsd_loss (F.kl_div form, labels with -100, batchmean), transcribed."""
    student, teacher, labels = make(4)

    def trl(s, t, labels, beta, temperature):
        s_lp, t_lp = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
        if beta == 0:
            jsd = F.kl_div(s_lp, t_lp, reduction="none", log_target=True)
        elif beta == 1:
            jsd = F.kl_div(t_lp, s_lp, reduction="none", log_target=True)
        else:
            b = torch.tensor(beta)
            m_lp = torch.logsumexp(torch.stack([s_lp + torch.log1p(-b), t_lp + torch.log(b)]), dim=0)
            jsd = beta * F.kl_div(m_lp, t_lp, reduction="none", log_target=True)
            jsd = jsd + (1 - beta) * F.kl_div(m_lp, s_lp, reduction="none", log_target=True)
        mask = labels != -100
        return jsd[mask].sum() / mask.sum()

    for beta in (0.0, 0.5, 0.9, 1.0):
        got = generalized_jsd(student, teacher, labels=labels, beta=beta, temperature=2.0)
        torch.testing.assert_close(got, trl(student, teacher, labels, beta, 2.0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- identities


def test_limits_and_symmetries():
    student, teacher, labels = make(5)
    fkl, rkl = forward_kl(student, teacher, labels=labels), reverse_kl(student, teacher, labels=labels)
    assert generalized_jsd(student, teacher, labels=labels, beta=0.0) == fkl
    assert generalized_jsd(student, teacher, labels=labels, beta=1.0) == rkl
    torch.testing.assert_close(skew_forward_kl(student, teacher, labels=labels, alpha=0.0), fkl)
    torch.testing.assert_close(skew_reverse_kl(student, teacher, labels=labels, alpha=0.0), rkl)
    torch.testing.assert_close(forward_kl(teacher, student, labels=labels), rkl)
    for beta in (0.2, 0.5):  # JSD_beta(s, t) == JSD_{1-beta}(t, s): the same mixture, roles swapped
        torch.testing.assert_close(
            generalized_jsd(student, teacher, labels=labels, beta=beta),
            generalized_jsd(teacher, student, labels=labels, beta=1 - beta),
        )


@pytest.mark.parametrize("name", list(LOSSES))
def test_divergence_of_a_distribution_from_itself_is_zero(name):
    student, _, labels = make(6)
    value = LOSSES[name](student, student.clone(), None, 1.0, 0.3, labels=labels)
    assert abs(value.item()) < 1e-6


def test_total_variation_lies_in_unit_interval():
    student, teacher, _ = make(7, scale=40.0)  # near one-hot distributions: TVD close to 1 where argmax differ
    per_token = total_variation(student, teacher, reduction="none")
    assert per_token.min() >= 0 and per_token.max() <= 1 + 1e-6
    disjoint = torch.full((1, 1, 4), -30.0)
    s, t = disjoint.clone(), disjoint.clone()
    s[..., 0], t[..., 1] = 30.0, 30.0
    torch.testing.assert_close(total_variation(s, t).double(), torch.tensor(1.0, dtype=torch.float64))


def test_temperature_divides_both_logits_without_t_squared():
    student, teacher, labels = make(8)
    got = forward_kl(student, teacher, labels=labels, temperature=4.0)
    torch.testing.assert_close(got, forward_kl(student / 4.0, teacher / 4.0, labels=labels))


def test_reductions_none_sum_mean_agree():
    student, teacher, labels = make(9)
    counted = labels != -100
    per_token = reverse_kl(student, teacher, labels=labels, reduction="none")
    assert per_token.shape == (B, T) and per_token[~counted].abs().max() == 0
    mean = reverse_kl(student, teacher, labels=labels)
    torch.testing.assert_close(per_token[counted].mean(), mean)
    torch.testing.assert_close(reverse_kl(student, teacher, labels=labels, reduction="sum"), mean * counted.sum())
    nothing = torch.zeros(B, T, dtype=torch.bool)
    assert forward_kl(student, teacher, nothing, reduction="sum") == 0


def test_bf16_inputs_are_computed_in_float32():
    student, teacher, labels = make(10, torch.bfloat16)
    s16 = student.clone().requires_grad_()
    got = generalized_jsd(s16, teacher, labels=labels)
    got.backward()
    s32 = student.float().requires_grad_()
    want = generalized_jsd(s32, teacher.float(), labels=labels)
    want.backward()
    assert got.dtype == torch.float32 and s16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s16.grad, s32.grad.bfloat16())
    # and against the float64 reference on the bf16-rounded logits
    torch.testing.assert_close(
        got.double(), ref_loss("generalized_jsd", student, teacher, labels != -100), rtol=2e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_vocabulary_entries_contribute_nothing(name):
    """Logits of -inf in both models (masked vocabulary) = the same loss on the vocabulary without them."""
    student, teacher, labels = make(11)
    padded_s = torch.cat([student, torch.full((B, T, 3), -math.inf)], dim=-1).requires_grad_()
    padded_t = torch.cat([teacher, torch.full((B, T, 3), -math.inf)], dim=-1)
    got = LOSSES[name](padded_s, padded_t, None, 1.0, 0.3, labels=labels)
    got.backward()
    torch.testing.assert_close(got, LOSSES[name](student, teacher, None, 1.0, 0.3, labels=labels))
    assert torch.isfinite(padded_s.grad).all() and padded_s.grad[..., V:].abs().max() == 0


# --------------------------------------------------------------------------- top-k teacher support


def ref_topk_kl(student, teacher_lp, ids, counted, temperature=1.0):
    """Forward KL of the coarsened distributions: the top-k tokens, plus one bucket for the rest."""
    q = ref_probs(student, temperature)
    total, count = 0.0, 0
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            if not counted[b, t]:
                continue
            p_top = teacher_lp[b, t].double().exp()
            q_top = q[b, t, ids[b, t]]
            value = (p_top * torch.log(p_top / q_top)).sum()
            r_t, r_s = 1 - p_top.sum(), 1 - q_top.sum()
            if r_t > 0:
                value = value + r_t * torch.log(r_t / r_s)
            total, count = total + value, count + 1
    return total / count


def test_topk_logprobs_are_the_largest_teacher_logprobs():
    _, teacher, _ = make(12)
    lp, ids = topk_logprobs(teacher, 4, temperature=2.0)
    full = F.log_softmax(teacher.double() / 2.0, -1)
    assert lp.shape == ids.shape == (B, T, 4)
    torch.testing.assert_close(lp.double(), full.gather(-1, ids))
    assert (lp[..., -1:].double() >= full.sort(-1, descending=True).values[..., 4:5] - 1e-6).all()


def test_topk_forward_kl_matches_float64_reference_value_and_gradient():
    student, teacher, labels = make(13, torch.float64)
    lp, ids = topk_logprobs(teacher, 5, temperature=1.5)
    mine, theirs = student.clone().requires_grad_(), student.clone().requires_grad_()
    got = topk_forward_kl(mine, lp, ids, labels=labels, temperature=1.5, chunk_size=3)
    want = ref_topk_kl(theirs, lp, ids, labels != -100, 1.5)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-8, atol=1e-12)


def test_topk_forward_kl_is_exact_at_k_equals_v():
    student, teacher, labels = make(14)
    lp, ids = topk_logprobs(teacher, V)
    mine, full = student.clone().requires_grad_(), student.clone().requires_grad_()
    got = topk_forward_kl(mine, lp, ids, labels=labels)
    want = forward_kl(full, teacher, labels=labels)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.grad, full.grad, rtol=1e-4, atol=1e-7)


def test_topk_error_against_full_forward_kl():
    """A lower bound of the full KL; small for a peaked teacher, large for a flat one (k = 8 of V = 1000).

    Measured (seed 0, student logits * 2): relative error of the mean 1.0 % for a peaked teacher (logits * 8),
    97 % for a flat one (logits * 0.5); at k = 64: 0.005 % and 83 %.
    """
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 16, 1000, generator=g) * 2.0
    base = torch.randn(4, 16, 1000, generator=g)
    relative = {}
    for kind, scale in (("peaked", 8.0), ("flat", 0.5)):
        full = forward_kl(student, base * scale, reduction="none")
        sparse = topk_forward_kl(student, *topk_logprobs(base * scale, 8), reduction="none")
        assert (sparse <= full + 1e-5).all()  # log-sum inequality: never above the full KL
        relative[kind] = ((full - sparse).sum() / full.sum()).item()
    assert 0 <= relative["peaked"] < 0.02
    assert relative["flat"] > 0.9


# --------------------------------------------------------------------------- bad input


def _bad_inputs():
    s, t, labels = make(15)
    lp, ids = topk_logprobs(t, 3)
    none = torch.zeros(B, T, dtype=torch.bool)
    return [
        ("vocabularies differ", lambda: forward_kl(s, t[..., :-1])),
        ("sequence lengths differ", lambda: reverse_kl(s, t[:, :-1])),
        ("must be \\[B, T, V\\]", lambda: total_variation(s[0], t[0])),
        ("counts no position", lambda: forward_kl(s, t, none)),
        ("counts no position", lambda: generalized_jsd(s, t, labels=torch.full((B, T), -100))),
        ("beta must be in \\[0, 1\\]", lambda: generalized_jsd(s, t, beta=1.5)),
        ("beta must be in \\[0, 1\\]", lambda: generalized_jsd(s, t, beta=-0.1)),
        ("alpha must be in \\[0, 1\\]", lambda: skew_forward_kl(s, t, alpha=1.2)),
        ("alpha must be in \\[0, 1\\]", lambda: skew_reverse_kl(s, t, alpha=-1)),
        ("temperature must be > 0", lambda: forward_kl(s, t, temperature=0.0)),
        ("temperature must be > 0", lambda: topk_forward_kl(s, lp, ids, temperature=-1.0)),
        ("mask must be bool", lambda: forward_kl(s, t, labels)),
        ("mask shape", lambda: forward_kl(s, t, none[:, :-1])),
        ("not both", lambda: forward_kl(s, t, labels != -100, labels=labels)),
        ("unknown reduction 'avg'", lambda: forward_kl(s, t, reduction="avg")),
        ("chunk_size must be", lambda: forward_kl(s, t, chunk_size=0)),
        ("another tokenizer", lambda: topk_forward_kl(s[..., :2], lp, ids)),
        ("not logits", lambda: topk_forward_kl(s, t[..., :3], ids)),
        ("both be \\[B, T, k\\]", lambda: topk_forward_kl(s, lp, ids[..., :2])),
        ("k must be in", lambda: topk_logprobs(t, V + 1)),
    ]


@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_bad_input_is_one_clear_line(index):
    match, call = _bad_inputs()[index]
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
