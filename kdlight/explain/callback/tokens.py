"""Scoring token maps on the real tokens only: padding never counts in a metric.

Text probes are token ids ``[n, T]`` padded with the modality's ``pad_id``; their maps are ``[n, T]``.
Every map metric of the callback (agreement, chance level, per-class table, localisation) sees each
probe's unpadded positions only: probes with the same number ``L`` of real tokens are scored
together on their ``[n_L, L]`` slices, so a probe's score is the metric of its real tokens, whatever
padding follows them. A top-k metric takes the top ``min(k, L)``: a probe with fewer real tokens
than ``k`` uses all of them. A probe without any real token is not scored.

Inputs of other modalities (no padding) are scored as before, in one update.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from kdlight.core.modality import Modality, Text
from kdlight.explain.metrics import MetricSpec

__all__ = ["real_tokens", "real_token_groups", "update_on_real_tokens", "top_k_of_real_tokens"]


def real_tokens(modality: Modality, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor | None:
    """``[n, T]`` True at the real (unpadded) tokens of text ``inputs``; ``None`` for inputs that have
    no padding. An ``attention_mask`` given with the inputs must agree with the padding (one-line
    error otherwise)."""
    if not isinstance(modality, Text):
        return None
    modality.check_ids(inputs, attention_mask)
    return modality.valid(inputs)


def real_token_groups(valid: Tensor, keep: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """``(rows [n_L], positions [n_L, L])`` for each count ``L >= 1`` of real tokens among the
    probes ``keep`` (default: all); ``positions`` lists each row's real-token indices in order."""
    keep = torch.ones(len(valid), dtype=torch.bool, device=valid.device) if keep is None else keep
    lengths = valid.sum(1)
    for length in lengths[keep & (lengths > 0)].unique().tolist():
        rows = (keep & (lengths == length)).nonzero().squeeze(1)
        positions = valid[rows].nonzero()[:, 1].view(len(rows), length)  # row-major: in order per row
        yield rows, positions


def update_on_real_tokens(
    metric: Metric,
    maps: Sequence[Tensor],
    valid: Tensor | None,
    keep: Tensor | None = None,
    per_probe: Sequence[Tensor] = (),
) -> None:
    """``metric.update(*maps, *per_probe)`` over the probes ``keep`` (default: all), each map
    ``[n, T]`` cut to its probe's real tokens where ``valid`` is given (one update per count of
    real tokens; ``per_probe`` tensors, e.g. labels, follow their rows). Maps may be broadcastable
    (a ground-truth mask ``[1, T]``)."""
    if valid is None:
        if keep is None:
            metric.update(*maps, *per_probe)
        elif keep.any():
            metric.update(*(m[keep] for m in maps), *(p[keep] for p in per_probe))
        return
    maps = [torch.broadcast_to(m, valid.shape) for m in maps]
    for rows, positions in real_token_groups(valid, keep):
        metric.update(*(m[rows].gather(1, positions) for m in maps), *(p[rows] for p in per_probe))


def top_k_of_real_tokens(spec: MetricSpec) -> MetricSpec:
    """``spec`` whose top-k size is at most the number of features scored: ``min(k, L)`` on a probe
    with ``L`` real tokens (other metrics unchanged)."""
    if not spec.uses_k:
        return spec
    fn = spec.fn

    @functools.wraps(fn)  # keeps the signature: the metric's options stay its own
    def top_k_of_at_most_all(*args, **options) -> Tensor:
        *compared, k = args
        return fn(*compared, min(k, math.prod(compared[0].shape[1:])), **options)

    return dataclasses.replace(spec, fn=top_k_of_at_most_all)
