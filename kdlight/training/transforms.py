"""Batch transforms applied inside the training step, so teacher and student see the same view.

This is "function matching" (Beyer et al., CVPR 2022): every step, teacher and student get the
identical strongly augmented batch, and the student matches the teacher's outputs on it. Mixing
transforms (mixup, cutmix) make the labels meaningless, so the step treats those samples as
unlabeled: only teacher-matching terms (KD, hints, ...) see them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BatchTransform(nn.Module):
    """Maps an input batch ``[B, ...]`` to an augmented batch of the same shape."""

    keeps_labels: bool = True

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_alpha(alpha: float) -> float:
    if not alpha > 0:
        raise ValueError(f"alpha of the Beta(alpha, alpha) mixing distribution must be > 0, got {alpha}")
    return float(alpha)


class MixUp(BatchTransform):
    """Convex combination of each sample with a shuffled partner, lambda ~ Beta(alpha, alpha) per sample."""

    keeps_labels = False

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, x: Tensor) -> Tensor:
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample((x.shape[0],)).to(x.device, x.dtype).view(-1, *[1] * (x.dim() - 1))
        partner = x[torch.randperm(x.shape[0], device=x.device)]
        return lam * x + (1 - lam) * partner


class CutMix(BatchTransform):
    """Paste a random box (a span for 1-D signals) from a shuffled partner; area ~ Beta(alpha, alpha)."""

    keeps_labels = False

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"CutMix needs [B, C, L] signals or [B, C, H, W] images, got shape {tuple(x.shape)}")
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        partner = x[torch.randperm(x.shape[0], device=x.device)]
        out = x.clone()
        sizes = x.shape[2:]
        cut = [max(1, int(round(s * (1 - lam) ** (1 / len(sizes))))) for s in sizes]
        starts = [int(torch.randint(0, s - c + 1, ())) for s, c in zip(sizes, cut)]
        box = (slice(None), slice(None), *[slice(a, a + c) for a, c in zip(starts, cut)])
        out[box] = partner[box]
        return out


class RandomShift(BatchTransform):
    """Shift every sample by up to ``max_shift`` positions along each spatial axis (zero fill)."""

    def __init__(self, max_shift: int = 1) -> None:
        super().__init__()
        if max_shift < 1:
            raise ValueError(f"max_shift must be >= 1, got {max_shift}")
        self.max_shift = max_shift

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3:
            raise ValueError(f"RandomShift needs [B, C, ...] spatial inputs, got shape {tuple(x.shape)}")
        out = torch.zeros_like(x)
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (x.shape[0], x.dim() - 2)).tolist()
        for i, shift in enumerate(shifts):
            src, dst = [slice(None)], [slice(None)]
            for s, size in zip(shift, x.shape[2:]):
                src.append(slice(max(0, -s), size - max(0, s)))
                dst.append(slice(max(0, s), size - max(0, -s)))
            out[i][tuple(dst)] = x[i][tuple(src)]
        return out


class Compose(BatchTransform):
    """Apply several transforms in order; labels survive only if every transform keeps them."""

    def __init__(self, transforms: list[BatchTransform]) -> None:
        super().__init__()
        if not transforms:
            raise ValueError("Compose needs at least one transform")
        self.transforms = nn.ModuleList(transforms)
        self.keeps_labels = all(t.keeps_labels for t in transforms)

    def forward(self, x: Tensor) -> Tensor:
        for transform in self.transforms:
            x = transform(x)
        return x
