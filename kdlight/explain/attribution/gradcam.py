"""Grad-CAM: the one implementation, used for evaluation-time maps and as a training map.

:func:`grad_cam` weighs a layer's activation channels by their mean gradient, sums them and keeps
the positive part (Selvaraju et al. 2017); :func:`upsample_cam` resizes that map to the input's
positions (linear for signals, bilinear for images, ``align_corners=False``) and broadcasts it
over the input channels. The layer is ``AttributionConfig.layer``, else the model's
``gradcam_layer`` attribute, else its last ``nn.Conv1d`` / ``nn.Conv2d`` in registration order.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.core.layers import module_names, resolve_module
from kdlight.core.modality import Modality
from kdlight.explain.attribution.base import CaptumMethod
from kdlight.explain.attribution.context import Placement, eval_mode, no_autocast
from kdlight.explain.attribution.registry import register
from kdlight.explain.attribution.training import target_score

__all__ = [
    "GradCam",
    "grad_cam",
    "upsample_cam",
    "grad_cam_map",
    "grad_cam_layer",
    "grad_cam_layer_name",
    "conv_layer_names",
    "layer_output_shape",
]


def conv_layer_names(model: nn.Module) -> list[str]:
    """Submodule paths of the model's ``nn.Conv1d`` / ``nn.Conv2d`` layers (Grad-CAM candidates)."""
    return [name for name, m in model.named_modules() if name and isinstance(m, (nn.Conv1d, nn.Conv2d))]


def _default_layer_name(model: nn.Module) -> str | None:
    declared = getattr(model, "gradcam_layer", None)
    if isinstance(declared, str) and declared:
        return declared
    convs = conv_layer_names(model)
    return convs[-1] if convs else None


def grad_cam_layer_name(model: nn.Module, layer: str | None) -> str | None:
    """The submodule path Grad-CAM explains: ``layer``, else the model's ``gradcam_layer``, else
    its last conv layer; ``None`` when there is no such submodule."""
    name = layer if layer is not None else _default_layer_name(model)
    if name is None:
        return None
    try:
        model.get_submodule(name)
    except AttributeError:
        return None
    return name


def grad_cam_layer(model: nn.Module, layer: str | None, role: str = "model") -> nn.Module:
    """The module Grad-CAM explains (see :func:`grad_cam_layer_name`), or a one-line ValueError."""
    name = layer if layer is not None else _default_layer_name(model)
    if name is None:
        raise ValueError(
            f"grad_cam needs a layer and the {role} has no gradcam_layer or Conv1d/Conv2d to default to; "
            f"set layer to one of: {', '.join(module_names(model))}"
        )
    return resolve_module(model, name, role, purpose="grad_cam")


def grad_cam(model: nn.Module, inputs: Tensor, target: Tensor, layer: nn.Module, *, create_graph: bool) -> Tensor:
    """ReLU'd Grad-CAM of ``layer`` at the layer's resolution, ``[N, 1, *positions']``.

    ``create_graph=True`` keeps the map differentiable w.r.t. the parameters (and ``inputs``, which
    are made to require grad). Without it the inputs are left alone and the forward records no
    graph until ``layer``: its output is detached and made to require grad, so only the layers
    after it record one (the same values; the forward costs about a plain one).
    """
    captured: list[Tensor] = []

    def hook(_module, _inp, output):
        first = output[0] if isinstance(output, (tuple, list)) else output
        if not create_graph:
            torch.set_grad_enabled(True)  # the layers after this one record a graph
            first = first.detach().requires_grad_(True).clone()  # not a leaf: in-place ops after it work
            if isinstance(output, (tuple, list)):
                output = [first, *output[1:]] if isinstance(output, list) else (first, *output[1:])
            else:
                output = first
        captured.append(first)
        return output

    with torch.enable_grad():  # Captum's NoiseTunnel calls it under no_grad
        if create_graph and not inputs.requires_grad:
            inputs.requires_grad_(True)
        handle = layer.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(create_graph):  # the hook turns it on at the layer
                logits = model(inputs)
        finally:
            handle.remove()
        if not captured:
            raise ValueError("the grad_cam layer did not run in the model's forward")
        activation = captured[-1]
        (grad,) = torch.autograd.grad(target_score(logits, target), activation, create_graph=create_graph)
        weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True) if grad.dim() > 2 else grad
        return F.relu(torch.sum(weights * activation, dim=1, keepdim=True))


def _check_spatial(modality: Modality) -> None:
    if modality.interpolation is None:
        raise ValueError(
            f"grad_cam needs inputs with spatial positions (image or signal), not {modality.name} inputs {modality.layout}"
        )


def upsample_cam(cam: Tensor, inputs: Tensor, modality: Modality) -> Tensor:
    """``[N, 1, *positions']`` -> ``inputs``' shape: resized with the modality's interpolation,
    broadcast over the input channels."""
    _check_spatial(modality)
    if cam.dim() != inputs.dim():
        raise ValueError(
            f"grad_cam layer output has shape {list(cam.shape)}; it must be spatial like the "
            f"input {list(inputs.shape)} (choose a convolutional layer)"
        )
    cam = F.interpolate(cam, size=tuple(inputs.shape[2:]), mode=modality.interpolation, align_corners=False)
    return cam.expand(-1, inputs.shape[1], *inputs.shape[2:])


def grad_cam_map(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    create_graph: bool,
    layer: str | None = None,
    modality: Modality | None = None,
    **_: object,
) -> Tensor:
    """The training map: :func:`grad_cam` on the resolved layer, resized like at evaluation."""
    modality = modality if modality is not None else Modality.for_inputs(x)
    _check_spatial(modality)
    cam = grad_cam(model, x, target, grad_cam_layer(model, layer), create_graph=create_graph)
    return upsample_cam(cam, x, modality)


@register
class GradCam(CaptumMethod):
    """Grad-CAM of ``config.layer`` (default: the model's ``gradcam_layer``, else its last conv),
    resized to the input and broadcast over channels. Noise tunnels average the layer maps
    before resizing."""

    name = "grad_cam"
    local = True
    hooks = True
    noise_tunnel = True
    explains_layer = True
    modalities = frozenset({"image", "signal"})
    training_map = staticmethod(grad_cam_map)

    def explainer(self, model, inputs, config, baselines):
        return _captum_grad_cam()(model, grad_cam_layer(model, config.layer)), {}

    def attribute(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        """:func:`grad_cam` called directly (Captum's wrapper only under a noise tunnel); ``inputs``
        are not changed."""
        if config.noise_tunnel is not None or not inputs.is_floating_point():
            return super().attribute(model, inputs, target, config, baselines=baselines, modality=modality)
        cam = grad_cam(model, inputs, target, grad_cam_layer(model, config.layer), create_graph=False)
        return self.finish(cam, inputs, modality)

    def finish(self, result: Tensor, inputs: Tensor, modality: Modality) -> Tensor:
        return upsample_cam(result, inputs, modality)


@cache
def _captum_grad_cam() -> type:
    """:func:`grad_cam` as a Captum ``GradientAttribution`` (so ``NoiseTunnel`` can wrap it);
    built on first use, because importing Captum imports matplotlib."""
    from captum.attr import GradientAttribution
    from captum.log import log_usage

    class CaptumGradCam(GradientAttribution):
        def __init__(self, model: nn.Module, layer: nn.Module) -> None:
            super().__init__(model)
            self.layer = layer

        @log_usage()  # NoiseTunnel calls attribute.__wrapped__
        def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
            return grad_cam(self.forward_func, inputs, target, self.layer, create_graph=False)

    return CaptumGradCam


@torch.no_grad()
def layer_output_shape(model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shape of submodule ``layer``'s output for a zero input ``[2, *input_shape]`` (eval mode, no
    grad; every train/eval flag is restored); ``None`` if the layer does not run in ``forward``."""
    place = Placement.of(model, torch.device("cpu"))
    captured: list[tuple[int, ...]] = []

    def hook(_module, _inp, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        captured.append(tuple(out.shape))

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.inference_mode(False), eval_mode(model), no_autocast(place.device.type):
            model(torch.zeros((2, *input_shape), device=place.device, dtype=place.dtype))
    finally:
        handle.remove()
    return captured[-1] if captured else None
