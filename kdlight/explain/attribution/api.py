"""``attribute``: evaluation-time attributions of one model, by method name."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlight.core.modality import Modality
from kdlight.explain.attribution.baselines import make_baselines
from kdlight.explain.attribution.config import AttributionConfig
from kdlight.explain.attribution.context import Placement, TargetLike, as_target, attribution_context
from kdlight.explain.attribution.registry import baseline_kind, get_method, is_pure
from kdlight.explain.attribution.tokens import check_token_method

__all__ = ["attribute"]


def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    config: AttributionConfig,
    *,
    train_inputs: Tensor | None = None,
    modality: Modality | None = None,
) -> Tensor:
    """Attributions of ``model`` for ``target`` (LongTensor [N] or an int) on ``inputs`` [N, ...].

    Returns a detached float32 tensor of ``inputs``' shape, on ``inputs``' device. Safe under
    no_grad, inference_mode and autocast; restores train/eval flags; leaves ``.grad`` alone (see
    :mod:`kdlight.explain.attribution.context`). ``train_inputs``: training inputs for the
    ``mean`` / ``sample`` baselines. ``modality``: the data module's (``datamodule.modality``);
    default: guessed from the inputs' rank (token ids need the text modality: see
    :mod:`kdlight.explain.attribution.tokens`).
    """
    if not isinstance(config, AttributionConfig):
        raise ValueError(f"config must be an AttributionConfig, got {type(config).__name__}")
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] < 1:
        raise ValueError("inputs must be a tensor [N, ...] with N >= 1")
    modality = modality if modality is not None else Modality.for_inputs(inputs)
    modality.check(inputs.shape)
    method = get_method(config.method)
    if modality.name == "text":
        check_token_method(method, config)
        modality.check_ids(inputs)
    if not method.supports(modality):
        raise ValueError(
            f"{config.method} supports {', '.join(sorted(method.modalities))} inputs, not {modality.name} inputs "
            f"{modality.layout} (shape {list(inputs.shape)}); choose another method"
        )
    place = Placement.of(model, inputs.device)
    random = get_method(config.method).random or config.noise_tunnel is not None
    seed = config.seed if random else None  # only calls that draw random numbers fork and seed the RNGs
    with attribution_context(
        model, (inputs.device, place.device), grad=True, seed=seed, quiet_hooks=not is_pure(config)
    ):
        x = place.put(inputs)
        tgt = as_target(target, x.shape[0], place.device)
        kind = baseline_kind(config, train_inputs is not None)
        baselines = None
        if kind is not None:
            train = None if train_inputs is None else place.put(train_inputs)
            baselines = make_baselines(kind, x, train, config.n_baselines, config.seed, modality=modality)
        result = method().attribute(model, x, tgt, config, baselines=baselines, modality=modality)
        return result.detach().to(torch.float32).contiguous().to(inputs.device)
