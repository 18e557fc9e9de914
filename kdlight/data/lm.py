"""Causal-LM batches: token sequences cut into fixed-length chunks, with next-token labels already shifted.

An LM batch (the LM convention) is ``{"inputs": ids [B, T], "attention_mask": ids != pad_id,
"labels": [B, T], "index": [B]}`` with ``labels[:, t] = inputs[:, t + 1]`` and ``-100`` (Hugging
Face's ignore index) at the last position and wherever the next token is padding.

    >>> next_token_labels(torch.tensor([[5, 6, 7, 0]]), pad_id=0).tolist()
    [[6, 7, -100, -100]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlight.data.text import TokenDataset

#: the label of a position that predicts nothing (Hugging Face / ``F.cross_entropy`` default)
IGNORE_INDEX = -100


def next_token_labels(ids: Tensor, pad_id: int) -> Tensor:
    """Labels ``[N, T]``: the next token of each position, ``IGNORE_INDEX`` at the last position
    and where the next token is ``pad_id`` (right padding)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    following = ids[:, 1:]
    labels[:, :-1] = torch.where(following != pad_id, following, torch.full_like(following, IGNORE_INDEX))
    return labels


def chunk_sequence(ids: Tensor, length: int, pad_id: int, min_tokens: int = 2) -> Tensor:
    """One token sequence ``[L]`` cut into consecutive chunks ``[C, length]``, the last one
    right-padded with ``pad_id``; a last chunk of fewer than ``min_tokens`` tokens (nothing to
    predict in it) is dropped."""
    if length < 2:
        raise ValueError(f"a chunk needs at least 2 tokens (one to read, one to predict), got length={length}")
    count = -(-len(ids) // length)
    padded = torch.full((count * length,), pad_id, dtype=torch.long)
    padded[: len(ids)] = ids
    chunks = padded.view(count, length)
    if count and len(ids) - (count - 1) * length < min_tokens:
        chunks = chunks[:-1]
    return chunks


class LMDataset(TokenDataset):
    """Named samples ``{"inputs": ids [T], "attention_mask": ids != pad_id, "labels": [T]}`` of one split."""

    label_key = "labels"

    def __init__(self, ids: Tensor, labels: Tensor, pad_id: int) -> None:
        if ids.shape != labels.shape:
            raise ValueError(f"ids {list(ids.shape)} and labels {list(labels.shape)} must have the same shape")
        super().__init__(ids, labels, pad_id)
