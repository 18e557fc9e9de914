"""Localisation: does a model's map point at the features known to matter?

For data with ground-truth relevant features -- the cue pixel of the shortcut digits
(:meth:`kdlight.data.shortcut.ShortcutDigitsDataModule.ground_truth_masks`) -- two per-sample
scores of one model's attribution map ``a`` against a boolean mask ``M`` of the relevant features:

* ``localisation_mass``: the share of attribution magnitude inside the mask,
  ``sum_{i in M} |a_i| / sum_i |a_i|``. This is the *relevance mass accuracy* of Arras et al.
  2022 ("CLEVR-XAI", Information Fusion 81), on ``|a|`` rather than the positive part, as every
  kdlight metric ranks features by ``|attribution|``. An all-zero map scores 0.
* ``localisation_topk``: ``|T_k ∩ M| / min(k, |M|)`` with ``T_k`` the ``k`` features of largest
  ``|a|`` (ties: lower flattened index first) that have a non-zero attribution. It is 1 exactly when
  the top-k holds as many ground-truth features as it can: recall@k when ``|M| <= k``, precision@k
  when ``|M| >= k``. For ``k = 1`` it is the hit of the *pointing game* (Zhang et al. 2016,
  "Top-down Neural Attention by Excitation Backprop", ECCV; here without their 15-pixel
  tolerance): 1 when the most attributed feature lies in the mask; with a one-feature mask (the
  cue pixel) it says whether that feature is among the top k. A feature with zero attribution is
  never pointed at, so an all-zero map scores 0.

Masks are boolean, of the maps' shape or broadcastable to it (``[1, ...]`` for one region shared
by all samples, ``[N, 1, H, W]`` for maps ``[N, C, H, W]``). A sample whose mask is empty (no
ground truth) or whose map is not finite gets NaN, which the metric classes skip and count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdlight.explain.metrics import MetricSpec, register_metric
from kdlight.functional.agreement import top_k_mask

__all__ = ["relevance_mass", "top_k_hit_rate", "LOCALISATION_MASS", "LOCALISATION_TOPK"]


def _flatten(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Float32 maps and boolean masks ``[N, F]``, and the rows that get NaN."""
    if not isinstance(maps, Tensor) or maps.ndim < 1:
        raise ValueError("maps must be a tensor with a leading sample dimension [N, ...]")
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
        dtype = masks.dtype if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a boolean tensor (True = relevant feature), got {dtype}")
    try:
        masks = torch.broadcast_to(masks.to(maps.device), maps.shape)
    except RuntimeError:
        raise ValueError(
            f"masks of shape {tuple(masks.shape)} do not broadcast to the maps' shape {tuple(maps.shape)}"
        ) from None
    n, f = maps.shape[0], math.prod(maps.shape[1:])
    if f == 0:
        raise ValueError(f"maps have no features per sample: shape {tuple(maps.shape)}")
    x = maps.detach().reshape(n, f).to(torch.float32)
    m = masks.reshape(n, f)
    bad = ~torch.isfinite(x).all(dim=1) | ~m.any(dim=1)
    return x, m, bad


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Per-sample share of ``|maps|`` inside ``masks`` ``[N]`` (0 for an all-zero map)."""
    x, m, bad = _flatten(maps, masks)
    magnitude = x.abs()
    peak = magnitude.amax(dim=1, keepdim=True)
    magnitude = magnitude / torch.where(peak > 0, peak, torch.ones_like(peak))  # no overflow in the sums
    total = magnitude.sum(dim=1)
    inside = (magnitude * m).sum(dim=1)
    out = inside / torch.where(total > 0, total, torch.ones_like(total))  # 0 for an all-zero map
    return torch.where(bad, torch.full_like(out, float("nan")), out)


def top_k_hit_rate(maps: Tensor, masks: Tensor, k: int) -> Tensor:
    """Per-sample ``|T_k ∩ M| / min(k, |M|)`` ``[N]``, ``T_k`` the top-k non-zero features by ``|maps|``."""
    x, m, bad = _flatten(maps, masks)
    pointed = top_k_mask(x, k) & (x != 0)
    hits = (pointed & m).sum(dim=1).to(torch.float32)
    possible = m.sum(dim=1).clamp(min=1, max=k).to(torch.float32)
    out = hits / possible
    return torch.where(bad, torch.full_like(out, float("nan")), out)


LOCALISATION_MASS = register_metric(MetricSpec("localisation_mass", relevance_mass, compares="mask"))
LOCALISATION_TOPK = register_metric(MetricSpec("localisation_topk", top_k_hit_rate, uses_k=True, compares="mask"))
