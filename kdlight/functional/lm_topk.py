"""Forward KL on a cached top-k teacher support (the teacher-output cache of causal-LM distillation).

Conventions (mask / labels, reduction, temperature, precision, chunking) as ``kdlight.functional.lm``.
"""

from __future__ import annotations

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

__all__ = ["topk_forward_kl", "topk_logprobs"]


def topk_logprobs(teacher_logits: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The teacher's top-``k`` log-probabilities of ``softmax(z_t / tau)`` and their token ids, ``[..., k]`` each.

    What a teacher-output cache stores for :func:`topk_forward_kl` (build it at the temperature the loss
    will use). Computed in float32 (float64 for float64 logits) without gradients, chunk by chunk.
    """
    check_options(temperature, "mean", None, "topk_logprobs")
    vocab = teacher_logits.shape[-1]
    if not 1 <= int(k) <= vocab:
        raise ValueError(f"topk_logprobs: k must be in [1, V={vocab}], got {k}")
    dtype, flat, chunk = compute_dtype(teacher_logits), teacher_logits.reshape(-1, vocab), default_chunk_size(vocab)
    with torch.no_grad():
        pieces = [
            F.log_softmax(scaled_logits(flat[i : i + chunk], dtype, temperature), dim=-1).topk(int(k), dim=-1)
            for i in range(0, flat.shape[0], chunk)
        ]
    shape = (*teacher_logits.shape[:-1], int(k))
    values = torch.cat([p.values for p in pieces]) if pieces else flat.new_zeros(0, int(k), dtype=dtype)
    ids = torch.cat([p.indices for p in pieces]) if pieces else flat.new_zeros(0, int(k), dtype=torch.long)
    return values.reshape(shape), ids.reshape(shape)


def _check_topk(student_logits: Tensor, logprobs: Tensor, ids: Tensor, what: str) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"{what}: student_logits must be [B, T, V], got {list(student_logits.shape)}")
    batch, length, vocab = student_logits.shape
    if logprobs.dim() != 3 or logprobs.shape != ids.shape or tuple(logprobs.shape[:2]) != (batch, length):
        raise ValueError(
            f"{what}: teacher_topk_logprobs and teacher_topk_ids must both be [B, T, k] with [B, T] = "
            f"{[batch, length]}, got {list(logprobs.shape)} and {list(ids.shape)}"
        )
    if not logprobs.dtype.is_floating_point or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{what}: expected float log-probabilities and integer ids, got {logprobs.dtype}, {ids.dtype}")
    if logprobs.shape[2] > vocab or (ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < vocab)):
        raise ValueError(
            f"{what}: teacher top-k ids must lie in [0, V={vocab}) with k <= V; was the cache built with another "
            "tokenizer or vocabulary?"
        )
    if logprobs.numel() and float(torch.logsumexp(logprobs.double(), dim=-1).max()) > 1e-3:
        raise ValueError(
            f"{what}: teacher top-k probabilities sum to more than 1; pass log-probabilities "
            "(log_softmax, e.g. from topk_logprobs), not logits"
        )


def topk_forward_kl(
    student_logits: Tensor,
    teacher_topk_logprobs: Tensor,
    teacher_topk_ids: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL on the teacher's cached top-k support, the rest of its mass as one bucket.

    With ``S`` the ``k`` ids, ``p_i`` the teacher's probabilities (``exp`` of
    ``teacher_topk_logprobs``, taken as given: build them at this ``temperature``, e.g. with
    :func:`topk_logprobs`), ``r_t = 1 - sum_S p_i`` and ``r_s`` the student's mass outside ``S``
    (``softmax(z_s / tau)``, computed in log space)::

        sum_{i in S} p_i log(p_i / q_i) + r_t log(r_t / r_s)

    This is the exact KL between the two distributions coarsened to ``S`` plus one "other" bucket,
    so (log-sum inequality) it is a lower bound of the full forward KL, equal to it when the
    student's distribution over the other tokens is proportional to the teacher's, and exact at
    ``k = V``. What it misses is how the student spreads the tail: with k = 8 of V = 1000 the mean
    falls 1 % short of the full KL for a peaked teacher and 97 % for a flat one
    (``tests/functional/test_lm.py``); gradients outside ``S`` only move the tail's total mass.
    Mask, labels, reduction,
    chunking and precision as the other losses (module docstring).
    """
    what = "topk_forward_kl"
    _check_topk(student_logits, teacher_topk_logprobs, teacher_topk_ids, what)
    check_options(temperature, reduction, chunk_size, what)
    batch, length, vocab = student_logits.shape
    counted = counted_positions((batch, length), mask, labels, what)
    dtype = compute_dtype(student_logits, teacher_topk_logprobs)
    floor = torch.finfo(dtype).min / 4

    def per_token(s: Tensor, log_p: Tensor, ids: Tensor) -> Tensor:
        log_q = F.log_softmax(scaled_logits(s, dtype, temperature), dim=-1)
        log_p = log_p.to(dtype).clamp_min(floor)
        head = (log_p.exp() * (log_p - log_q.gather(-1, ids))).sum(-1)
        if ids.shape[-1] == vocab:  # no token outside the support: the bucket is empty (r_t = 0 up to rounding)
            return head
        tail_t = (-torch.expm1(torch.logsumexp(log_p, dim=-1))).clamp_min(0)
        log_tail_s = torch.logsumexp(log_q.scatter(-1, ids, floor), dim=-1)
        return head + torch.xlogy(tail_t, tail_t) - tail_t * log_tail_s

    flat = [
        student_logits.reshape(-1, vocab),
        teacher_topk_logprobs.reshape(batch * length, -1),
        teacher_topk_ids.reshape(batch * length, -1).long(),
    ]
    return reduce_rows(per_token, flat, counted, reduction, chunk_size, vocab, what)
