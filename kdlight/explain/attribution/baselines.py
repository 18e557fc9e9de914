"""Baselines: the reference inputs that baseline methods compare an input with."""

from __future__ import annotations

import torch
from torch import Tensor

from kdlight.core.modality import Modality

__all__ = ["make_baselines"]


def make_baselines(
    kind: str,
    inputs: Tensor,
    train_inputs: Tensor | None = None,
    n: int = 16,
    seed: int = 0,
    *,
    modality: Modality | None = None,
) -> Tensor:
    """Baselines for ``inputs`` ([N, ...]).

    ``"zeros"`` -> the modality's reference input ``[1, ...]`` (zeros without a modality);
    ``"mean"`` -> training mean ``[1, ...]`` (not for token ids); ``"sample"`` -> ``min(n, len(train_inputs))``
    training inputs drawn without replacement by a local generator seeded with ``seed`` (same
    seed, same rows). Returned on ``inputs``' device and dtype.
    """
    if kind not in ("zeros", "mean", "sample"):
        raise ValueError(f"unknown baseline kind {kind!r}; valid kinds are: zeros, mean, sample")
    feature_shape = tuple(inputs.shape[1:])
    if kind == "mean" and modality is not None and modality.name == "text":
        raise ValueError(
            "baseline='mean' averages token ids, which is not a token sequence; use baseline='zeros' (the "
            "reference token) for text inputs"
        )
    if kind == "zeros":
        if modality is not None:
            return modality.reference(inputs)
        with torch.inference_mode(False):
            return torch.zeros((1, *feature_shape), dtype=inputs.dtype, device=inputs.device)
    if train_inputs is None:
        raise ValueError(
            f"baseline {kind!r} needs training data: pass train_inputs=<tensor of training inputs> "
            f"or use baseline='zeros'"
        )
    if tuple(train_inputs.shape[1:]) != feature_shape or train_inputs.shape[0] < 1:
        raise ValueError(
            f"train_inputs must have shape [M>=1, {', '.join(map(str, feature_shape))}] like the "
            f"inputs, got {list(train_inputs.shape)}"
        )
    with torch.inference_mode(False), torch.no_grad():
        train = train_inputs.detach()
        if kind == "mean":
            out = train.to(dtype=torch.float32).mean(dim=0, keepdim=True)
        else:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"n must be an integer >= 1, got {n!r}")
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            idx = torch.randperm(train.shape[0], generator=generator)[: min(n, train.shape[0])]
            out = train[idx.to(train.device)]
        return out.to(device=inputs.device, dtype=inputs.dtype).clone()
