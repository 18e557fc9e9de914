"""Per-sample explanation agreement and prediction fidelity against independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import log_softmax as np_log_softmax
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

from kdlight.functional import agreement as A
from kdlight.functional.agreement import (
    average_ranks,
    cosine_agreement,
    feature_agreement,
    pairwise_rank_agreement,
    pearson_agreement,
    predictive_kl,
    rank_agreement,
    rank_correlation,
    sign_agreement,
    signed_rank_agreement,
    top1_agreement,
    top_k_mask,
)

PAIR_FNS = [cosine_agreement, rank_correlation, pearson_agreement, pairwise_rank_agreement]
TOPK_FNS = [feature_agreement, rank_agreement, sign_agreement, signed_rank_agreement]


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------
# independent references (numpy / python loops)
# ------------------------------------------------------------------------------------------
def _np_topk(row: np.ndarray, k: int) -> list[int]:
    # stable sort by -|x|: ties broken by lower index, the documented convention
    return list(np.argsort(-np.abs(row), kind="stable")[:k])


def _ref_krishna(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    ta, tb = _np_topk(a, k), _np_topk(b, k)
    common = set(ta) & set(tb)
    same_rank = {f for f in common if ta.index(f) == tb.index(f)}
    same_sign = {f for f in common if np.sign(a[f]) == np.sign(b[f])}
    return {
        "feature": len(common) / k,
        "rank": len(same_rank) / k,
        "sign": len(same_sign) / k,
        "signed_rank": len(same_rank & same_sign) / k,
    }


def _ref_pairwise(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.abs(a), np.abs(b)
    f = len(a)
    agree = total = 0
    for i in range(f):
        for j in range(i + 1, f):
            total += 1
            agree += int(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]))
    return agree / total


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", PAIR_FNS + [lambda a, b: feature_agreement(a, b, 2)])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError) as err:
        fn(torch.zeros(3, 4), torch.zeros(3, 5))
    msg = str(err.value)
    assert "(3, 4)" in msg and "(3, 5)" in msg and "\n" not in msg


@pytest.mark.parametrize("fn", [top1_agreement, predictive_kl])
def test_logit_shape_mismatch(fn):
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="logits"):
        fn(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))


@pytest.mark.parametrize("fn", TOPK_FNS)
@pytest.mark.parametrize("k", [0, -1, 6, 1.5, True, None])
def test_k_validation(fn, k):
    with pytest.raises(ValueError, match="k"):
        fn(torch.randn(2, 5), torch.randn(2, 5), k)


@pytest.mark.parametrize("fn", TOPK_FNS)
def test_k_bounds_inclusive(fn):
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert fn(a, b, 1).shape == (3,)
    assert fn(a, b, 5).shape == (3,)
    assert fn(a, b, np.int64(2)).shape == (3,)


def test_no_features_raises():
    with pytest.raises(ValueError, match="no features"):
        cosine_agreement(torch.zeros(2, 0), torch.zeros(2, 0))


@pytest.mark.parametrize("fn", PAIR_FNS)
def test_empty_batch(fn):
    out = fn(torch.zeros(0, 3, 2), torch.zeros(0, 3, 2))
    assert out.shape == (0,) and out.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# cosine / pearson
# ------------------------------------------------------------------------------------------
def test_cosine_matches_sklearn_on_multidim_maps():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    got = cosine_agreement(a, b)
    ref = np.diag(sk_cosine(a.reshape(6, -1).numpy(), b.reshape(6, -1).numpy()))
    assert got.shape == (6,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)


def test_cosine_zero_map_is_zero_not_nan():
    a = _t([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = _t([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert cosine_agreement(a, b).tolist() == [0.0, 0.0, 0.0]


def test_cosine_tiny_and_huge_magnitudes():
    # naive sqrt(sum x^2) under/overflows in float32 here; the result must not depend on scale
    a = _t([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    b = _t([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    ref = float(np.dot([1, 2, 3], [3, 2, 1]) / 14.0)
    got = cosine_agreement(a * torch.tensor([[1e-30], [1e30]]), b * torch.tensor([[1e-30], [1e30]]))
    np.testing.assert_allclose(got.numpy(), [ref, ref], rtol=1e-6)


def test_pearson_matches_scipy():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 20, generator=g), torch.randn(5, 20, generator=g)
    b[0] = 2 * a[0] + 1  # perfect linear relation
    got = pearson_agreement(a, b)
    ref = [stats.pearsonr(a[i].numpy(), b[i].numpy())[0] for i in range(5)]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    assert got[0] == pytest.approx(1.0, abs=1e-6)


def test_pearson_constant_map_is_zero():
    a = _t([[0.1] * 7, [0.0] * 7])
    b = torch.randn(2, 7)
    assert pearson_agreement(a, b).tolist() == [0.0, 0.0]
    assert pearson_agreement(b, a).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------
# Spearman rank correlation
# ------------------------------------------------------------------------------------------
def test_average_ranks_matches_scipy_rankdata():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (8, 11), generator=g).float()
    got = average_ranks(x)
    ref = np.stack([stats.rankdata(r, method="average") for r in x.numpy()])
    np.testing.assert_array_equal(got.numpy(), ref)


def test_rank_correlation_matches_scipy_spearman_on_abs_with_ties():
    g = torch.Generator().manual_seed(3)
    # small integer values in [-3, 3]: many ties, and sign flips that |.| must merge
    a = torch.randint(-3, 4, (12, 2, 5), generator=g).float()
    b = torch.randint(-3, 4, (12, 2, 5), generator=g).float()
    got = rank_correlation(a, b)
    ref = []
    for i in range(12):
        ra, rb = np.abs(a[i].reshape(-1).numpy()), np.abs(b[i].reshape(-1).numpy())
        ref.append(stats.spearmanr(ra, rb).statistic)
    ref = np.asarray(ref)
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)


def test_rank_correlation_continuous_matches_scipy():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    ref = [stats.spearmanr(np.abs(a[i].numpy()), np.abs(b[i].numpy())).statistic for i in range(4)]
    np.testing.assert_allclose(rank_correlation(a, b).numpy(), ref, atol=1e-6)


def test_rank_correlation_hand_example():
    # |a| = [3, 1, 2] -> ranks [3, 1, 2]; |b| = [1, 2, 3] -> ranks [1, 2, 3]
    # d = [2, -1, -1], sum d^2 = 6, rho = 1 - 6*6 / (3*(9-1)) = -0.5
    assert rank_correlation(_t([[-3.0, 1.0, 2.0]]), _t([[1.0, -2.0, 3.0]])).item() == pytest.approx(-0.5)


def test_rank_correlation_constant_map_is_zero():
    # all |values| equal: scipy gives NaN (undefined); we return 0 by convention
    a = _t([[0.0, 0.0, 0.0, 0.0], [2.0, -2.0, 2.0, -2.0]])
    b = _t([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    assert rank_correlation(a, b).tolist() == [0.0, 0.0]
    assert rank_correlation(a, a).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------
# Krishna et al. top-k metrics
# ------------------------------------------------------------------------------------------
# Example 1 (F = 4)
#   a = [ 0.9, -0.5, 0.3,  0.1]   |a| order: f0, f1, f2, f3   signs + - + +
#   b = [-0.8,  0.1, 0.6, -0.4]   |b| order: f0, f2, f3, f1   signs - + + -
# k=2: T_a={f0,f1}, T_b={f0,f2}; common {f0}; f0 rank 1 in both; f0 signs differ
#      FA=1/2 RA=1/2 SA=0 SRA=0
# k=3: T_a={f0,f1,f2}, T_b={f0,f2,f3}; common {f0,f2}; same rank: f0 (f2 is 3rd vs 2nd);
#      same sign: f2 -> FA=2/3 RA=1/3 SA=1/3 SRA=0
# k=4: all common; same rank only f0; same sign only f2 -> FA=1 RA=1/4 SA=1/4 SRA=0
EX1_A = [0.9, -0.5, 0.3, 0.1]
EX1_B = [-0.8, 0.1, 0.6, -0.4]
EX1 = {
    2: (1 / 2, 1 / 2, 0.0, 0.0),
    3: (2 / 3, 1 / 3, 1 / 3, 0.0),
    4: (1.0, 1 / 4, 1 / 4, 0.0),
}
# Example 2 (F = 3)
#   a = [3, -2, 1]        |a| order f0, f1, f2   signs + - +
#   b = [2.5, -0.5, 1.5]  |b| order f0, f2, f1   signs + - +
# k=2: common {f0} at rank 1, same sign -> FA=RA=SA=SRA=1/2
# k=3: all common; same rank only f0; all signs agree -> FA=1 RA=1/3 SA=1 SRA=1/3
EX2_A = [3.0, -2.0, 1.0]
EX2_B = [2.5, -0.5, 1.5]
EX2 = {
    1: (1.0, 1.0, 1.0, 1.0),
    2: (1 / 2, 1 / 2, 1 / 2, 1 / 2),
    3: (1.0, 1 / 3, 1.0, 1 / 3),
}


@pytest.mark.parametrize("a, b, table", [(EX1_A, EX1_B, EX1), (EX2_A, EX2_B, EX2)], ids=["example1", "example2"])
def test_krishna_hand_examples(a, b, table):
    # put the example in a batch next to an unrelated row to check rows stay independent
    f = len(a)
    other = torch.arange(1.0, f + 1.0)
    ta, tb = torch.stack([_t(a), other]), torch.stack([_t(b), -other])
    for k, (fa, ra, sa, sra) in table.items():
        got = [fn(ta, tb, k) for fn in TOPK_FNS]
        for value, expected in zip(got, (fa, ra, sa, sra)):
            assert value[0].item() == pytest.approx(expected, abs=1e-7)
        # second row: b = -a -> same features, same ranks, opposite signs
        assert [g[1].item() for g in got] == [1.0, 1.0, 0.0, 0.0]


def test_krishna_ties_broken_by_feature_index():
    # a: f0 and f1 tie -> top-1 is f0; b: f1 and f2 tie -> top-1 is f1
    a, b = _t([[1.0, 1.0, 0.0]]), _t([[0.0, 1.0, 1.0]])
    assert feature_agreement(a, b, 1).item() == 0.0
    # k=2: T_a = {f0, f1} (order f0, f1), T_b = {f1, f2} (order f1, f2) -> FA=1/2, RA=0
    assert feature_agreement(a, b, 2).item() == 0.5
    assert rank_agreement(a, b, 2).item() == 0.0
    assert sign_agreement(a, b, 2).item() == 0.5
    assert signed_rank_agreement(a, b, 2).item() == 0.0


def test_sign_of_zero_only_matches_zero():
    a, b = _t([[0.0, 2.0, 1.0]]), _t([[0.0, -2.0, 1.0]])
    assert sign_agreement(a, b, 3).item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [1, 3, 7, 15])
def test_krishna_random_against_numpy_reference(k):
    g = torch.Generator().manual_seed(10 + k)
    a, b = torch.randn(20, 3, 5, generator=g), torch.randn(20, 3, 5, generator=g)
    b[:5] = a[:5] * torch.rand(5, 3, 5, generator=g).add(0.5)  # correlated rows
    got = {name: fn(a, b, k).numpy() for name, fn in zip(("feature", "rank", "sign", "signed_rank"), TOPK_FNS)}
    for i in range(20):
        ref = _ref_krishna(a[i].reshape(-1).numpy(), b[i].reshape(-1).numpy(), k)
        for name, value in ref.items():
            assert got[name][i] == pytest.approx(value, abs=1e-7), (name, i)


# ------------------------------------------------------------------------------------------
# pairwise rank agreement
# ------------------------------------------------------------------------------------------
def test_top_k_mask_matches_a_stable_numpy_sort_with_ties():
    g = torch.Generator().manual_seed(14)
    a = torch.randint(-3, 4, (6, 2, 5), generator=g).float()  # many ties in |value|
    for k in (1, 4, 10):
        mask = top_k_mask(a, k)
        assert mask.shape == (6, 10) and mask.dtype == torch.bool
        for i in range(6):
            expected = np.zeros(10, dtype=bool)
            expected[_np_topk(a[i].reshape(-1).numpy(), k)] = True
            assert mask[i].tolist() == expected.tolist()
    with pytest.raises(ValueError, match="1 <= k <= F"):
        top_k_mask(a, 11)


def test_pairwise_hand_examples():
    # |a|=[3,1,2] vs |b|=[1,3,2]: (0,1) >,< ; (0,2) >,< ; (1,2) <,> -> 0/3
    assert pairwise_rank_agreement(_t([[3.0, -1.0, 2.0]]), _t([[1.0, 3.0, -2.0]])).item() == 0.0
    # ties: (0,1) tied in both -> agrees; (0,2),(1,2) '<' in both -> 3/3
    assert pairwise_rank_agreement(_t([[1.0, -1.0, 2.0]]), _t([[1.0, 1.0, 3.0]])).item() == 1.0
    # (0,1) tied in a only -> disagrees; the other two agree -> 2/3
    assert pairwise_rank_agreement(_t([[1.0, 1.0, 2.0]]), _t([[1.0, 2.0, 3.0]])).item() == pytest.approx(2 / 3)


def test_pairwise_matches_bruteforce_with_ties():
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-3, 4, (15, 9), generator=g).float()
    b = torch.randint(-3, 4, (15, 9), generator=g).float()
    got = pairwise_rank_agreement(a, b)
    ref = [_ref_pairwise(a[i].numpy(), b[i].numpy()) for i in range(15)]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-7)


def test_pairwise_chunking_gives_same_result(monkeypatch):
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(11, 6, generator=g), torch.randn(11, 6, generator=g)
    full = pairwise_rank_agreement(a, b)
    monkeypatch.setattr(A, "_PAIRWISE_CHUNK_ELEMENTS", 2 * 36 + 1)  # 2 samples per chunk
    chunked = pairwise_rank_agreement(a, b)
    assert torch.equal(full, chunked)
    ref = [_ref_pairwise(a[i].numpy(), b[i].numpy()) for i in range(11)]
    np.testing.assert_allclose(chunked.numpy(), ref, atol=1e-7)


def test_pairwise_single_feature_is_vacuous_one():
    assert pairwise_rank_agreement(_t([[1.0], [0.0]]), _t([[-2.0], [3.0]])).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------------------
# invariants, dtypes, non-finite values
# ------------------------------------------------------------------------------------------
def test_self_agreement_is_one_everywhere():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, 2, 8, generator=g)
    for fn in PAIR_FNS:
        np.testing.assert_allclose(fn(a, a).numpy(), 1.0, atol=1e-6, err_msg=fn.__name__)
    for fn in TOPK_FNS:
        for k in (1, 5, 16):
            assert fn(a, a, k).tolist() == [1.0] * 6, fn.__name__


def test_negated_map():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(6, 12, generator=g)
    for k in (1, 4, 12):
        assert sign_agreement(a, -a, k).tolist() == [0.0] * 6
        assert signed_rank_agreement(a, -a, k).tolist() == [0.0] * 6
        assert rank_agreement(a, -a, k).tolist() == [1.0] * 6
        assert feature_agreement(a, -a, k).tolist() == [1.0] * 6
    np.testing.assert_allclose(rank_correlation(a, -a).numpy(), 1.0, atol=1e-6)
    assert pairwise_rank_agreement(a, -a).tolist() == [1.0] * 6
    np.testing.assert_allclose(cosine_agreement(a, -a).numpy(), -1.0, atol=1e-6)
    np.testing.assert_allclose(pearson_agreement(a, -a).numpy(), -1.0, atol=1e-6)


def test_scale_invariance():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    for fn in PAIR_FNS:
        np.testing.assert_allclose(fn(3.0 * a, b).numpy(), fn(a, b).numpy(), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(5, 3, 7, generator=g).to(dtype), torch.randn(5, 3, 7, generator=g).to(dtype)
    a32, b32 = a.float(), b.float()
    for fn in PAIR_FNS:
        out = fn(a, b)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(a32, b32))
    for fn in TOPK_FNS:
        out = fn(a, b, 4)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(a32, b32, 4))
    # the Spearman reference still holds on the rounded half values (ties included)
    ref = [
        stats.spearmanr(np.abs(a32[i].reshape(-1).numpy()), np.abs(b32[i].reshape(-1).numpy())).statistic
        for i in range(5)
    ]
    np.testing.assert_allclose(rank_correlation(a, b).numpy(), ref, atol=1e-6)
    s, t = a.reshape(5, -1)[:, :6], b.reshape(5, -1)[:, :6]
    assert predictive_kl(s, t).dtype == torch.float32
    torch.testing.assert_close(predictive_kl(s, t), predictive_kl(s.float(), t.float()))
    assert top1_agreement(s, t).dtype == torch.float32


def test_half_precision_large_logits_do_not_overflow():
    s = torch.tensor([[60000.0, -60000.0, 0.0]], dtype=torch.float16)
    t = torch.tensor([[-60000.0, 60000.0, 0.0]], dtype=torch.float16)
    assert torch.isfinite(predictive_kl(s, t)).all()
    a = torch.full((1, 64), 60000.0, dtype=torch.float16)
    assert cosine_agreement(a, a).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rows_give_nan_only_for_that_row(bad):
    g = torch.Generator().manual_seed(12)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    clean = {fn.__name__: fn(a, b) for fn in PAIR_FNS}
    clean.update({fn.__name__: fn(a, b, 3) for fn in TOPK_FNS})
    a2, b2 = a.clone(), b.clone()
    a2[1, 2] = bad
    b2[3, 0] = bad
    dirty = {fn.__name__: fn(a2, b2) for fn in PAIR_FNS}
    dirty.update({fn.__name__: fn(a2, b2, 3) for fn in TOPK_FNS})
    for name in clean:
        assert torch.isnan(dirty[name][[1, 3]]).all(), name
        assert torch.equal(dirty[name][[0, 2]], clean[name][[0, 2]]), name


def test_inputs_requiring_grad_are_fine():
    a = torch.randn(3, 5, requires_grad=True)
    b = torch.randn(3, 5)
    for fn in PAIR_FNS:
        assert not fn(a, b).requires_grad
    assert not feature_agreement(a, b, 2).requires_grad


# ------------------------------------------------------------------------------------------
# prediction fidelity
# ------------------------------------------------------------------------------------------
def test_top1_agreement():
    s = _t([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    t = _t([[5.0, 0.0, 0.0], [0.0, 3.0, 1.0], [2.0, 2.0, 1.0]])
    out = top1_agreement(s, t)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.0, 1.0]


def test_predictive_kl_matches_numpy():
    g = torch.Generator().manual_seed(13)
    s, t = 2 * torch.randn(7, 10, generator=g), 2 * torch.randn(7, 10, generator=g)
    ls, lt = np_log_softmax(s.double().numpy(), axis=1), np_log_softmax(t.double().numpy(), axis=1)
    ref = (np.exp(lt) * (lt - ls)).sum(axis=1)  # KL(p_t || p_s)
    np.testing.assert_allclose(predictive_kl(s, t).numpy(), ref, rtol=1e-5, atol=1e-6)
    # scipy.stats.entropy(p, q) is KL(p || q)
    assert predictive_kl(s[:1], t[:1]).item() == pytest.approx(stats.entropy(np.exp(lt[0]), np.exp(ls[0])), rel=1e-5)
    # direction matters: KL(p_t||p_s) != KL(p_s||p_t) in general
    assert not torch.allclose(predictive_kl(s, t), predictive_kl(t, s))
    assert predictive_kl(s, s).abs().max().item() < 1e-6


def test_predictive_kl_masked_teacher_class():
    # teacher logit -inf -> p_t = 0 for that class -> that term contributes 0 (not NaN)
    s = _t([[0.0, 0.0, 0.0]])
    t = _t([[0.0, 0.0, float("-inf")]])
    # p_t = [.5, .5, 0], p_s = [1/3]*3 -> KL = log(1.5)
    assert predictive_kl(s, t).item() == pytest.approx(np.log(1.5), rel=1e-6)


def test_fidelity_nan_logits():
    s = _t([[float("nan"), 0.0], [1.0, 0.0]])
    t = _t([[1.0, 0.0], [1.0, 0.0]])
    assert torch.isnan(top1_agreement(s, t)[0]) and top1_agreement(s, t)[1] == 1.0
    assert torch.isnan(predictive_kl(s, t)[0]) and predictive_kl(s, t)[1] == 0.0


def test_all_functions_exported():
    for name in A.__all__:
        assert callable(getattr(A, name))
    assert set(itertools.chain(("average_ranks",), (f.__name__ for f in PAIR_FNS + TOPK_FNS))) <= set(A.__all__)
    assert {"top1_agreement", "predictive_kl"} <= set(A.__all__)
