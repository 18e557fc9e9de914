"""Token-level distillation divergences for language models (pure maths, no Lightning).

Every loss takes ``student_logits`` and ``teacher_logits`` of shape ``[B, T, V]`` and returns
the mean over counted positions of a per-token divergence between ``p_s = softmax(z_s / tau)``
and ``p_t = softmax(z_t / tau)``.

Conventions (shared by every function here):

* **Which positions count.** ``mask`` is a bool ``[B, T]`` tensor, True = the position counts;
  or pass Hugging Face ``labels=`` (``[B, T]`` integers, ``-100`` = ignore) instead. Both are
  aligned with the logits: for a causal LM pair ``logits[:, :-1]`` with ``labels[:, 1:]``.
  ``mask=None`` and ``labels=None``: every position counts. An integer mask is refused (a 0/1
  ``attention_mask`` would otherwise be read as labels and count padding): pass ``mask.bool()``.
* **Reduction.** ``"mean"`` (default): the sum of per-token divergences over counted positions
  divided by their number (TRL's ``batchmean`` with labels, DistiLLM's reduction); a mask that
  counts no position is an error. ``"sum"``: the sum (divide by a global token count yourself
  for gradient accumulation, as TRL's ``num_items_in_batch``). ``"none"``: ``[B, T]`` values,
  0 where a position does not count.
* **Temperature** divides both logits; there is **no** ``tau^2`` factor (the LM convention, as
  TRL's GKD trainer; torchtune's and DistiLLM's KD losses have no temperature at all, i.e.
  ``tau = 1``; unlike the classifier :func:`kdlight.functional.kd_loss`).
* **Precision.** Computed and returned in float32 (float64 if an input is float64), also for
  bf16/fp16 logits. Logits equal to ``-inf`` (masked vocabulary entries) are replaced by a
  finite floor, so an entry that both models give probability 0 contributes 0 (DistiLLM's
  ``inf_mask``) and gradients stay finite.
* **Memory.** Counted positions are processed in chunks of ``chunk_size`` (default
  ``2**22 // V``, about 131 positions at V = 32k): the forward keeps only per-token values and
  the backward recomputes each chunk, so float32 ``[B, T, V]`` intermediates never exist at
  once; the only full-size tensor is the gradient itself. Measured (``scripts/bench/lm_memory.py``,
  2048 positions x V = 32k float32, forward + backward, CPU peak RSS growth with
  ``MALLOC_MMAP_THRESHOLD_=131072``): 410 MiB against 1250 MiB for the naive form and 964 MiB
  for ``torch.utils.checkpoint`` per chunk. Differentiable once (no double backward).

Definitions (``KL(a || b) = sum_v a_v log(a_v / b_v)``, the true divergence, entropy included):

* :func:`forward_kl` ``KL(p_t || p_s)``; :func:`reverse_kl` ``KL(p_s || p_t)``.
* :func:`generalized_jsd` ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``,
  ``m = beta p_t + (1 - beta) p_s`` (GKD, Agarwal et al. 2024, eq. 1). As TRL's
  ``GKDTrainer.generalized_jsd_loss``: ``beta = 0`` is forward KL and ``beta = 1`` reverse KL
  (special cases: the formula itself tends to 0 at both ends), temperature divides both logits,
  no ``tau^2``. Differences from TRL: without labels TRL divides by the batch size B (a
  per-sequence sum); here by the number of counted positions. TRL returns 0 for an all-ignored
  batch; here ``"mean"`` raises.
* :func:`skew_forward_kl` ``KL(p_t || alpha p_t + (1 - alpha) p_s)`` and :func:`skew_reverse_kl`
  ``KL(p_s || (1 - alpha) p_t + alpha p_s)`` (DistiLLM, Ko et al. 2024; ``alpha`` is DistiLLM's
  ``lam``, same convention, default 0.1). DistiLLM's ``forward_kl`` and ``skewed_forward_kl``
  return the cross-entropy ``-sum p_t log q`` (no teacher entropy): same gradient, values
  larger by ``H(p_t)``. DistiLLM has no temperature (``tau = 1`` here matches it).
* :func:`total_variation` ``1/2 sum_v |p_t - p_s|``, in [0, 1].
* :func:`topk_forward_kl` forward KL on a cached teacher top-k support (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlight.functional._lm_common import (
    check_options,
    compute_dtype,
    counted_positions,
    default_chunk_size,
    reduce_rows,
    scaled_logits,
)
from kdlight.functional.lm_topk import topk_forward_kl, topk_logprobs

__all__ = [
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "topk_forward_kl",
    "topk_logprobs",
    "default_chunk_size",
]


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, what: str) -> None:
    s, t = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ValueError(f"{what}: logits must be [B, T, V], got student {list(s)}, teacher {list(t)}")
    if s[2] != t[2]:
        raise ValueError(
            f"{what}: vocabularies differ: student V={s[2]}, teacher V={t[2]}; distil between models that share "
            "one tokenizer and vocabulary"
        )
    if s[:2] != t[:2]:
        raise ValueError(
            f"{what}: batch or sequence lengths differ: student [B, T] = {list(s[:2])}, teacher {list(t[:2])}; "
            "run both models on the same token ids"
        )


def _check_unit(name: str, value: float, what: str, meaning: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what}: {name} must be in [0, 1] ({meaning}), got {value}")


def _pairwise(
    divergence: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    labels: Tensor | None,
    temperature: float,
    reduction: str,
    chunk_size: int | None,
    what: str,
) -> Tensor:
    """Shared path: checks, then ``divergence(log p_s, log p_t) -> [rows]`` over counted positions."""
    _check_pair(student_logits, teacher_logits, what)
    check_options(temperature, reduction, chunk_size, what)
    batch, length, vocab = student_logits.shape
    counted = counted_positions((batch, length), mask, labels, what)
    dtype = compute_dtype(student_logits, teacher_logits)

    def per_token(s: Tensor, t: Tensor) -> Tensor:
        log_ps = F.log_softmax(scaled_logits(s, dtype, temperature), dim=-1)
        log_pt = F.log_softmax(scaled_logits(t, dtype, temperature), dim=-1)
        return divergence(log_ps, log_pt)

    flat = [student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)]
    return reduce_rows(per_token, flat, counted, reduction, chunk_size, vocab, what)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row from log-probabilities (finite floors: ``0 * floor = 0``)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _log_mix(log_p: Tensor, log_q: Tensor, weight: float) -> Tensor:
    """``log(weight * p + (1 - weight) * q)`` for ``0 < weight < 1``."""
    w = torch.tensor(float(weight), dtype=log_p.dtype, device=log_p.device)
    return torch.logaddexp(log_p + torch.log(w), log_q + torch.log1p(-w))


# --------------------------------------------------------------------------- public losses


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL ``KL(p_t || p_s)`` per token, averaged over counted positions (module docstring)."""
    return _pairwise(
        lambda ls, lt: _kl(lt, ls),
        student_logits, teacher_logits, mask, labels, temperature, reduction, chunk_size, "forward_kl",
    )  # fmt: skip


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Reverse KL ``KL(p_s || p_t)`` per token, averaged over counted positions."""
    return _pairwise(
        lambda ls, lt: _kl(ls, lt),
        student_logits, teacher_logits, mask, labels, temperature, reduction, chunk_size, "reverse_kl",
    )  # fmt: skip


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """GKD's generalized JSD ``beta KL(p_t||m) + (1-beta) KL(p_s||m)``, ``m = beta p_t + (1-beta) p_s``.

    ``beta = 0`` is forward KL and ``beta = 1`` reverse KL, as in TRL (see the module docstring).
    """
    _check_unit("beta", beta, "generalized_jsd", "0 = forward KL, 1 = reverse KL")
    beta = float(beta)

    def divergence(ls: Tensor, lt: Tensor) -> Tensor:
        if beta == 0.0:
            return _kl(lt, ls)
        if beta == 1.0:
            return _kl(ls, lt)
        log_m = _log_mix(lt, ls, beta)
        return beta * _kl(lt, log_m) + (1.0 - beta) * _kl(ls, log_m)

    return _pairwise(
        divergence, student_logits, teacher_logits, mask, labels, temperature, reduction, chunk_size, "generalized_jsd"
    )


def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    alpha: float = 0.1,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """DistiLLM's skew KL ``KL(p_t || alpha p_t + (1 - alpha) p_s)`` (alpha = 0: forward KL; 1: zero)."""
    _check_unit("alpha", alpha, "skew_forward_kl", "the teacher's share of the mixture")
    alpha = float(alpha)

    def divergence(ls: Tensor, lt: Tensor) -> Tensor:
        if alpha in (0.0, 1.0):
            return _kl(lt, ls) if alpha == 0.0 else _kl(lt, lt)
        return _kl(lt, _log_mix(lt, ls, alpha))

    return _pairwise(
        divergence, student_logits, teacher_logits, mask, labels, temperature, reduction, chunk_size, "skew_forward_kl"
    )


def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    alpha: float = 0.1,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """DistiLLM's skew reverse KL ``KL(p_s || (1 - alpha) p_t + alpha p_s)`` (alpha = 0: reverse KL)."""
    _check_unit("alpha", alpha, "skew_reverse_kl", "the student's share of the mixture")
    alpha = float(alpha)

    def divergence(ls: Tensor, lt: Tensor) -> Tensor:
        if alpha in (0.0, 1.0):
            return _kl(ls, lt) if alpha == 0.0 else _kl(ls, ls)
        return _kl(ls, _log_mix(ls, lt, alpha))

    return _pairwise(
        divergence, student_logits, teacher_logits, mask, labels, temperature, reduction, chunk_size, "skew_reverse_kl"
    )


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Total variation distance ``1/2 sum_v |p_t - p_s|`` per token (in [0, 1])."""
    return _pairwise(
        lambda ls, lt: 0.5 * (lt.exp() - ls.exp()).abs().sum(-1),
        student_logits, teacher_logits, mask, labels, temperature, reduction, chunk_size, "total_variation",
    )  # fmt: skip
