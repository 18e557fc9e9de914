"""Per-sample agreement between two explanations, and prediction fidelity between two models.

Every attribution function takes two tensors ``a``, ``b`` of the same shape ``[N, ...]``,
flattens each sample to ``F`` features (``[N, F]``) and returns a float32 tensor of shape
``[N]``, one value per sample, computed without a Python loop over samples. Inputs of any
floating (or integer) dtype are computed in float32, so half / bfloat16 maps are upcast.

Definitions follow Krishna et al. 2022, "The Disagreement Problem in Explainable ML"
(arXiv:2202.01602): features are ranked by ``|attribution|``, largest first.

Conventions for edge cases (shared by all attribution functions):

* A sample whose ``a`` or ``b`` row contains a non-finite value (NaN / +-inf) gets ``NaN``,
  so that the accumulating metrics in :mod:`kdlight.explain.metrics` can skip and count it
  instead of reporting a silently meaningless number.
* Ties in ``|attribution|`` for the top-k metrics are broken by feature index (the lower
  flattened index ranks first), so the results are deterministic.
* Correlations (Spearman, Pearson) and the cosine are defined as ``0`` when either map is
  constant (all-zero for the cosine), where the textbook formula divides by zero.

Prediction fidelity (Stanton et al. 2021, arXiv:2106.05945) works on logits ``[N, C]``:
:func:`top1_agreement` and :func:`predictive_kl`.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

__all__ = [
    "cosine_agreement",
    "rank_correlation",
    "pearson_agreement",
    "feature_agreement",
    "rank_agreement",
    "sign_agreement",
    "signed_rank_agreement",
    "pairwise_rank_agreement",
    "top1_agreement",
    "predictive_kl",
    "average_ranks",
    "top_k_mask",
]

# Upper bound on N_chunk * F * F boolean elements materialised at once by the pairwise metric.
_PAIRWISE_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_same_shape(a: Tensor, b: Tensor, what: str = "a and b") -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{what} must be torch.Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _prepare(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate, flatten to float32 ``[N, F]`` and return ``(x, y, bad_rows)``."""
    _check_same_shape(a, b)
    if a.ndim == 0:
        raise ValueError("attribution maps must have a leading sample dimension [N, ...], got a scalar")
    n = a.shape[0]
    feats = math.prod(a.shape[1:])
    x = a.detach().reshape(n, feats).to(torch.float32)
    y = b.detach().reshape(n, feats).to(torch.float32)
    if x.shape[1] == 0:
        raise ValueError(f"attribution maps have no features per sample: shape {tuple(a.shape)}")
    bad = ~(torch.isfinite(x).all(dim=1) & torch.isfinite(y).all(dim=1))
    return x, y, bad


def _mark_bad(out: Tensor, bad: Tensor) -> Tensor:
    return torch.where(bad, torch.full_like(out, float("nan")), out)


def _check_k(k: int, num_features: int) -> int:
    if isinstance(k, bool):
        raise ValueError(f"k must be an integer with 1 <= k <= F={num_features}, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer with 1 <= k <= F={num_features}, got {k!r}") from None
    if not 1 <= k <= num_features:
        raise ValueError(
            f"k must satisfy 1 <= k <= F, where F={num_features} is the number of features per sample; got k={k}"
        )
    return k


def _scale_rows(x: Tensor) -> Tensor:
    """Divide each row by its max |value| (rows of zeros unchanged), to avoid under/overflow."""
    m = x.abs().amax(dim=1, keepdim=True)
    return x / torch.where(m > 0, m, torch.ones_like(m))


def _order_by_magnitude(x: Tensor) -> Tensor:
    """Feature indices of each row sorted by |value|, largest first; ties by lower index."""
    return torch.sort(x.abs(), dim=1, descending=True, stable=True).indices


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise Pearson correlation; 0 where either row is constant."""
    const = (x == x[:, :1]).all(dim=1) | (y == y[:, :1]).all(dim=1)
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    xc = _scale_rows(xc)
    yc = _scale_rows(yc)
    num = (xc * yc).sum(dim=1)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    r = num / torch.where(den > 0, den, torch.ones_like(den))
    r = torch.where(const | (den <= 0), torch.zeros_like(r), r)
    return r.clamp(-1.0, 1.0)


def average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of each row of ``x`` ``[N, F]`` (ascending), ties get their average rank.

    Matches ``scipy.stats.rankdata(method="average")`` row by row, vectorized over rows.
    """
    if x.ndim != 2:
        raise ValueError(f"average_ranks expects a 2-D tensor [N, F], got shape {tuple(x.shape)}")
    n, f = x.shape
    sorted_vals, order = torch.sort(x, dim=1, stable=True)
    # group id of each sorted position: increments where the value changes
    new_group = torch.ones_like(sorted_vals, dtype=torch.long)
    if f > 1:
        new_group[:, 1:] = (sorted_vals[:, 1:] != sorted_vals[:, :-1]).long()
    group = new_group.cumsum(dim=1) - 1  # 0-based group index per row
    counts = torch.zeros((n, f), dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, group, torch.ones((n, f), dtype=torch.float32, device=x.device))
    end = counts.cumsum(dim=1)  # 1-based last position of each group
    start = end - counts  # 0-based first position -> ranks start+1 .. end
    avg = (start + 1 + end) / 2
    sorted_ranks = avg.gather(1, group)
    ranks = torch.empty((n, f), dtype=torch.float32, device=x.device)
    ranks.scatter_(1, order, sorted_ranks)
    return ranks


# --------------------------------------------------------------------------------------------
# attribution agreement
# --------------------------------------------------------------------------------------------
def cosine_agreement(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the flattened maps, per sample; 0 where either map is all zeros."""
    x, y, bad = _prepare(a, b)
    xs, ys = _scale_rows(x), _scale_rows(y)
    num = (xs * ys).sum(dim=1)
    den = torch.linalg.vector_norm(xs, dim=1) * torch.linalg.vector_norm(ys, dim=1)
    out = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
    return _mark_bad(out.clamp(-1.0, 1.0), bad)


def pearson_agreement(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the flattened (signed) maps, per sample; 0 if either map is constant."""
    x, y, bad = _prepare(a, b)
    return _mark_bad(_pearson_rows(x, y), bad)


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation between the rankings of the features by ``|attribution|``.

    Ties get averaged ranks (as ``scipy.stats.spearmanr``). Where either map has all
    ``|values|`` equal (e.g. an all-zero map) the correlation is undefined (scipy returns NaN);
    here it is ``0`` ("no agreement information"), so a degenerate explanation does not poison
    an average. NaN is kept only for maps with non-finite values.
    """
    x, y, bad = _prepare(a, b)
    rx = average_ranks(x.abs())
    ry = average_ranks(y.abs())
    return _mark_bad(_pearson_rows(rx, ry), bad)


def top_k_mask(maps: Tensor, k: int) -> Tensor:
    """Boolean ``[N, F]``: the ``k`` features of each flattened map with the largest ``|value|``.

    Ties are broken by feature index (lower first), as in the top-k agreement metrics.
    """
    if not isinstance(maps, Tensor) or maps.ndim == 0:
        raise ValueError("maps must be a tensor with a leading sample dimension [N, ...]")
    x = maps.detach().reshape(maps.shape[0], math.prod(maps.shape[1:])).to(torch.float32)
    k = _check_k(k, x.shape[1])
    return torch.zeros_like(x, dtype=torch.bool).scatter_(1, _order_by_magnitude(x)[:, :k], True)


def _topk_masks(x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    order_x = _order_by_magnitude(x)[:, :k]
    order_y = _order_by_magnitude(y)[:, :k]
    in_x = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order_x, True)
    in_y = torch.zeros_like(y, dtype=torch.bool).scatter_(1, order_y, True)
    return order_x, order_y, in_x, in_y


def feature_agreement(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Feature agreement: ``|T_a ∩ T_b| / k`` with ``T`` the top-k features by ``|value|``."""
    x, y, bad = _prepare(a, b)
    k = _check_k(k, x.shape[1])
    _, _, in_x, in_y = _topk_masks(x, y, k)
    out = (in_x & in_y).sum(dim=1).to(torch.float32) / k
    return _mark_bad(out, bad)


def rank_agreement(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Rank agreement: features in both top-k sets at the same rank position, divided by ``k``."""
    x, y, bad = _prepare(a, b)
    k = _check_k(k, x.shape[1])
    order_x, order_y, _, _ = _topk_masks(x, y, k)
    out = (order_x == order_y).sum(dim=1).to(torch.float32) / k
    return _mark_bad(out, bad)


def sign_agreement(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Sign agreement: features in both top-k sets with the same sign, divided by ``k``.

    Signs are ``torch.sign`` values, so an exact zero only matches another exact zero.
    """
    x, y, bad = _prepare(a, b)
    k = _check_k(k, x.shape[1])
    _, _, in_x, in_y = _topk_masks(x, y, k)
    same_sign = torch.sign(x) == torch.sign(y)
    out = (in_x & in_y & same_sign).sum(dim=1).to(torch.float32) / k
    return _mark_bad(out, bad)


def signed_rank_agreement(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Signed rank agreement: same feature at the same top-k rank and with the same sign, / ``k``."""
    x, y, bad = _prepare(a, b)
    k = _check_k(k, x.shape[1])
    order_x, order_y, _, _ = _topk_masks(x, y, k)
    same_pos = order_x == order_y
    sx = torch.sign(x).gather(1, order_x)
    sy = torch.sign(y).gather(1, order_x)  # same feature as order_y where same_pos
    out = (same_pos & (sx == sy)).sum(dim=1).to(torch.float32) / k
    return _mark_bad(out, bad)


def pairwise_rank_agreement(a: Tensor, b: Tensor) -> Tensor:
    """Fraction of feature pairs ``i < j`` whose relative order by ``|value|`` agrees.

    A pair agrees when ``sign(|a_i| - |a_j|) == sign(|b_i| - |b_j|)``. Ties therefore count
    as follows: a pair tied in both maps agrees; a pair tied in one map but strictly ordered in
    the other disagrees. With a single feature there are no pairs and the value is ``1``
    (vacuous agreement). Memory is ``O(chunk · F²)``: samples are processed in chunks so that at
    most ~16M pair entries are materialised at once.
    """
    x, y, bad = _prepare(a, b)
    n, f = x.shape
    if f < 2:
        return _mark_bad(torch.ones(n, dtype=torch.float32, device=x.device), bad)
    ax, ay = x.abs(), y.abs()
    chunk = max(1, _PAIRWISE_CHUNK_ELEMENTS // (f * f))
    agree_total = []
    for start in range(0, n, chunk):
        xa = ax[start : start + chunk]
        ya = ay[start : start + chunk]
        gx = xa[:, :, None] > xa[:, None, :]
        gy = ya[:, :, None] > ya[:, None, :]
        # (i, j) agrees iff [x_i > x_j] == [y_i > y_j] and [x_j > x_i] == [y_j > y_i]
        agree = (gx == gy) & (gx.transpose(1, 2) == gy.transpose(1, 2))
        agree_total.append(agree.sum(dim=(1, 2), dtype=torch.int64))
    total = torch.cat(agree_total) if agree_total else torch.zeros(0, dtype=torch.int64, device=x.device)
    # the relation is symmetric in (i, j) and always true on the diagonal
    agreeing_pairs = (total - f) // 2
    out = agreeing_pairs.to(torch.float64) / (f * (f - 1) // 2)
    return _mark_bad(out.to(torch.float32), bad)


# --------------------------------------------------------------------------------------------
# prediction fidelity
# --------------------------------------------------------------------------------------------
def _prepare_logits(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    _check_same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
    if student_logits.ndim != 2 or student_logits.shape[1] == 0:
        raise ValueError(f"logits must have shape [N, C] with C >= 1, got {tuple(student_logits.shape)}")
    return student_logits.detach().to(torch.float32), teacher_logits.detach().to(torch.float32)


def top1_agreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``1.0`` where student and teacher predict the same class (argmax), else ``0.0``; ``[N]``.

    Samples with a NaN logit get NaN.
    """
    s, t = _prepare_logits(student_logits, teacher_logits)
    out = (s.argmax(dim=1) == t.argmax(dim=1)).to(torch.float32)
    bad = torch.isnan(s).any(dim=1) | torch.isnan(t).any(dim=1)
    return _mark_bad(out, bad)


def predictive_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per-sample ``KL(p_t || p_s)`` with ``p = softmax(logits)`` (temperature 1), in nats.

    Classes with ``p_t = 0`` (e.g. a ``-inf`` teacher logit) contribute 0. NaN logits give NaN.
    """
    s, t = _prepare_logits(student_logits, teacher_logits)
    log_ps = torch.log_softmax(s, dim=1)
    log_pt = torch.log_softmax(t, dim=1)
    pt = log_pt.exp()
    terms = torch.where(pt > 0, pt * (log_pt - log_ps), torch.zeros_like(pt))
    kl = terms.sum(dim=1)
    bad = torch.isnan(s).any(dim=1) | torch.isnan(t).any(dim=1)
    return _mark_bad(kl.clamp_min(0.0), bad)
