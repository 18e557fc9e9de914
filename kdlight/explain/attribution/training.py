"""Differentiable (training-time) maps: a loss on them trains the model.

Written with ``torch.autograd.grad(create_graph=...)``; each method with a training map names its
function in its ``training_map`` metadata (saliency, input x gradient and integrated gradients
here; Grad-CAM in :mod:`kdlight.explain.attribution.gradcam`). On token ids (integer inputs) the
maps are taken at the embedding output and summed over the hidden dimension (saliency: the
gradient's L2 norm; :func:`kdlight.explain.attribution.tokens.token_map`), 0 at padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlight.core.modality import Modality
from kdlight.explain.attribution.context import TargetLike, as_target, target_score
from kdlight.explain.attribution.registry import METHODS
from kdlight.explain.attribution.tokens import explains_tokens, token_map

__all__ = [
    "input_gradient_map",
    "training_map_kinds",
    "target_score",
    "saliency_map",
    "input_x_gradient_map",
    "integrated_gradients_map",
]


def training_map_kinds(tokens: bool = False) -> tuple[str, ...]:
    """Names of the registered methods that have a differentiable training map (``tokens``: those
    that also explain token ids)."""
    return tuple(
        name
        for name, method in METHODS.items()
        if method.training_map is not None and (not tokens or explains_tokens(method))
    )


def saliency_map(
    model: nn.Module, x: Tensor, target: Tensor, *, create_graph: bool, modality: Modality | None = None, **_: object
) -> Tensor:
    """``d logit_target / d x`` (token ids: at the embedding output)."""
    if not x.is_floating_point():
        return token_map(model, x, target, kind="gradient", create_graph=create_graph, modality=modality)
    x = x.requires_grad_(True) if not x.requires_grad else x
    (grad,) = torch.autograd.grad(target_score(model(x), target), x, create_graph=create_graph)
    return grad


def input_x_gradient_map(
    model: nn.Module, x: Tensor, target: Tensor, *, create_graph: bool, modality: Modality | None = None, **_: object
) -> Tensor:
    """``x * d logit_target / d x`` (token ids: embedding x gradient)."""
    if not x.is_floating_point():
        return token_map(model, x, target, kind="gradient_x_embedding", create_graph=create_graph, modality=modality)
    x = x.requires_grad_(True) if not x.requires_grad else x
    (grad,) = torch.autograd.grad(target_score(model(x), target), x, create_graph=create_graph)
    return x * grad


def integrated_gradients_map(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    create_graph: bool,
    n_steps: int = 8,
    baseline: Tensor | None = None,
    modality: Modality | None = None,
    **_: object,
) -> Tensor:
    """Midpoint Riemann sum with ``n_steps`` points from ``baseline`` (default zeros; token ids: at
    the embedding output from the reference sequence), in one batched forward."""
    if not x.is_floating_point():
        return token_map(
            model,
            x,
            target,
            kind="integrated_gradients",
            create_graph=create_graph,
            n_steps=n_steps,
            baseline=baseline,
            modality=modality,
        )
    base = torch.zeros_like(x) if baseline is None else baseline.detach().to(x).expand_as(x)
    alphas = (torch.arange(n_steps, device=x.device, dtype=x.dtype) + 0.5) / n_steps
    shape = (n_steps,) + (1,) * x.dim()
    path = base.unsqueeze(0) + alphas.view(shape) * (x - base).unsqueeze(0)
    path = path.reshape(n_steps * x.shape[0], *x.shape[1:]).requires_grad_(True)
    score = target_score(model(path), target.repeat(n_steps))
    (grad,) = torch.autograd.grad(score, path, create_graph=create_graph)
    mean_grad = grad.view(n_steps, *x.shape).mean(dim=0)
    return (x - base) * mean_grad


def input_gradient_map(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    kind: str,
    create_graph: bool,
    layer: str | None = None,
    *,
    n_steps: int = 8,
    baseline: Tensor | None = None,
    modality: Modality | None = None,
) -> Tensor:
    """Differentiable explanation map with the inputs' shape, for training-time matching.

    ``kind``: a method with a training map (:func:`training_map_kinds`): ``"saliency"``
    (d logit_target / d x), ``"input_x_gradient"`` (x * gradient), ``"grad_cam"`` (ReLU'd
    Grad-CAM on ``layer`` -- default the model's ``gradcam_layer``, else its last conv -- resized to
    the input's positions as in evaluation and broadcast over channels),
    ``"integrated_gradients"`` (midpoint Riemann sum with ``n_steps`` points from ``baseline``,
    default zeros, computed in one batched forward). ``modality``: how Grad-CAM maps are resized
    (default: guessed from the inputs' rank). Token ids (integer inputs): the maps are taken at the
    model's embedding output (``get_input_embeddings()``) and summed over the hidden dimension
    (saliency: the gradient's L2 norm) -> ``[N, T]``, 0 at padding (the text ``modality``'s ``pad_id`` / ``reference_id``, else the
    model's ``pad_token_id``); ``baseline``: reference ids; kinds: :func:`training_map_kinds` with
    ``tokens=True``.

    With ``create_graph=True`` the map stays in the autograd graph, so a loss on it trains the
    model's parameters; with ``False`` the map is detached. Runs in the model's current train/eval
    mode and under the current autocast (it is one more forward of the model); grad is enabled
    inside, so it also works for a frozen teacher under ``no_grad``. Parameter ``.grad`` is not
    touched (gradients are taken w.r.t. the inputs with ``torch.autograd.grad``).
    """
    method = METHODS.get(kind)
    if method is None or method.training_map is None:
        raise ValueError(f"unknown map kind {kind!r}; valid kinds are: {', '.join(training_map_kinds())}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not inputs.is_floating_point() and not explains_tokens(method):
        raise ValueError(
            f"{kind} cannot explain token ids; kinds that work for text: {', '.join(training_map_kinds(tokens=True))}"
        )
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach()
        if x.is_inference():
            x = x.clone()
        tgt = as_target(target, x.shape[0], x.device)
        result = method.training_map(
            model, x, tgt, create_graph=create_graph, layer=layer, n_steps=n_steps, baseline=baseline, modality=modality
        )
        result = result.to(inputs.dtype if inputs.is_floating_point() else torch.float32)
        return result if create_graph else result.detach()
