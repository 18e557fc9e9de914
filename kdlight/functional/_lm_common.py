"""Shared machinery of the token-level LM losses: which positions count, input checks, chunking.

Private to ``kdlight.functional.lm`` / ``lm_topk``; see ``kdlight.functional.lm`` for the conventions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100  # Hugging Face's "ignore this label"
CHUNK_ELEMENTS = 2**22  # logits per chunk: a [chunk, V] float32 temporary is 16 MiB
REDUCTIONS = ("mean", "sum", "none")

PerToken = Callable[..., Tensor]  # row chunks of the flattened inputs -> [rows] divergences


def default_chunk_size(vocab_size: int) -> int:
    """Positions per chunk: ``max(1, 2**22 // vocab_size)`` (131 at V = 32,000)."""
    return max(1, CHUNK_ELEMENTS // max(int(vocab_size), 1))


# --------------------------------------------------------------------------- chunked engine


class ChunkedRows(torch.autograd.Function):
    """Per-row values of ``per_token`` over ``rows`` of flattened inputs, chunk by chunk.

    Forward keeps only the ``[rows]`` result; backward recomputes each chunk under autograd and
    writes its input gradients into one buffer per input (uncounted rows get 0).
    """

    @staticmethod
    def forward(ctx, per_token: PerToken, rows: Tensor, chunk_size: int, *flat: Tensor) -> Tensor:
        ctx.per_token, ctx.chunk_size = per_token, chunk_size
        ctx.save_for_backward(rows, *flat)
        pieces = [
            per_token(*(x.index_select(0, rows[i : i + chunk_size]) for x in flat))
            for i in range(0, rows.numel(), chunk_size)
        ]
        return torch.cat(pieces)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: Tensor):
        rows, *flat = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        grads = [torch.zeros_like(x) if need else None for x, need in zip(flat, needs)]
        for i in range(0, rows.numel(), ctx.chunk_size):
            idx = rows[i : i + ctx.chunk_size]
            with torch.enable_grad():
                pieces = [x.index_select(0, idx).requires_grad_(need) for x, need in zip(flat, needs)]
                values = ctx.per_token(*pieces)
                wanted = [p for p, need in zip(pieces, needs) if need]
                found = iter(torch.autograd.grad(values, wanted, grad_outputs=grad_rows[i : i + ctx.chunk_size]))
            for grad, need in zip(grads, needs):
                if need:
                    grad.index_copy_(0, idx, next(found).to(grad.dtype))
        return (None, None, None, *grads)


def counted_positions(shape: tuple[int, int], mask: Tensor | None, labels: Tensor | None, what: str) -> Tensor:
    """Bool ``[B, T]`` of the positions that count, from ``mask`` or ``labels``."""
    if mask is not None and labels is not None:
        raise ValueError(f"{what}: pass mask or labels, not both")
    if labels is not None:
        if labels.shape != shape or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"{what}: labels must be integer [B, T] = {list(shape)} with -100 = ignore, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        return labels != IGNORE_INDEX
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    if mask.dtype != torch.bool:
        raise ValueError(
            f"{what}: mask must be bool [B, T] (True = counts), got {mask.dtype}; pass mask.bool() for a 0/1 "
            "attention mask, or labels=... for Hugging Face labels with -100"
        )
    if mask.shape != shape:
        raise ValueError(f"{what}: mask shape {list(mask.shape)} must equal the logits' [B, T] = {list(shape)}")
    return mask


def check_options(temperature: float, reduction: str, chunk_size: int | None, what: str) -> None:
    if not float(temperature) > 0:
        raise ValueError(f"{what}: temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{what}: unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not int(chunk_size) >= 1):
        raise ValueError(f"{what}: chunk_size must be a positive number of positions or None, got {chunk_size}")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def scaled_logits(logits: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    """``logits / tau`` in ``dtype`` with ``-inf`` raised to a finite floor (probability stays 0)."""
    return (logits.to(dtype) / temperature).clamp_min(torch.finfo(dtype).min / 4)


def reduce_rows(
    per_token: PerToken,
    flat: list[Tensor],
    counted: Tensor,
    reduction: str,
    chunk_size: int | None,
    vocab_size: int,
    what: str,
) -> Tensor:
    rows = counted.reshape(-1).to(flat[0].device).nonzero().squeeze(1)
    if reduction == "mean" and rows.numel() == 0:
        raise ValueError(f"{what}: the mask counts no position (all False or all labels -100); nothing to average")
    if rows.numel() == 0:  # "sum" / "none" of nothing: zeros that still backpropagate
        values = flat[0][:0, 0].to(compute_dtype(*flat)) * 0
    else:
        values = ChunkedRows.apply(per_token, rows, chunk_size or default_chunk_size(vocab_size), *flat)
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values.new_zeros(counted.numel()).index_put((rows,), values).reshape(counted.shape)
