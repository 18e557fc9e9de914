"""One place that maps an attribution-method name to a Captum call with sensible defaults.

Used by the validation callback, by explanation-matching objectives and by the notebooks.

Two entry points:

* :func:`attribute` / :func:`attribute_pair` -- *evaluation-time* attributions (Captum), safe in
  any surrounding context: ``torch.no_grad`` (validation inside ``fit``), ``torch.inference_mode``
  (``trainer.validate`` / ``test``; inference-tensor inputs are cloned), an active
  ``torch.autocast`` (it is disabled; the computation runs in float32). The model is switched to
  eval mode for the call and every submodule's train/eval flag is restored afterwards; parameter
  ``.grad`` and ``requires_grad`` are left untouched (Captum differentiates w.r.t. the inputs with
  ``torch.autograd.grad``). Random methods are seeded from ``config.seed`` inside a forked RNG
  (torch CPU, the inputs' CUDA device, numpy and ``random``), so teacher and student explained
  with the same config see identical randomness and the global RNG state is not changed.
  The result is a detached float32 tensor with the shape of ``inputs``.
* :func:`input_gradient_map` -- *training-time* maps (saliency, input x gradient, Grad-CAM, a
  few-step integrated gradients) written with ``torch.autograd.grad(create_graph=...)`` so a loss
  on the map can train the model.

Decisions
---------
* ``saliency`` is the *signed* gradient ``d logit_target / d x`` (Captum ``abs=False``); metrics
  that need magnitudes take ``abs`` themselves, and sign agreement stays measurable.
* Baselines (``AttributionConfig.baseline``): ``"zeros"`` -- a zero input of shape ``[1, ...]``;
  ``"mean"`` -- the training mean, shape ``[1, ...]`` (needs ``train_inputs``); ``"sample"`` --
  a fixed random sample of ``n_baselines`` training inputs (the distribution the SHAP-style
  methods average over; needs ``train_inputs``); ``"auto"`` (default) -- ``"sample"`` for
  ``gradient_shap`` / ``deeplift_shap`` when ``train_inputs`` are given, ``"zeros"`` otherwise and
  for every other method. An explicit ``"zeros"`` is honoured as zeros for the SHAP methods too.
  ``deeplift_shap`` with a single baseline row (zeros, mean, or ``n_baselines=1``) is computed
  with Captum ``DeepLift`` (DeepLiftShap averages DeepLift over the baselines, and Captum's
  DeepLiftShap refuses a distribution of one). ``"sample"`` is only accepted for the two SHAP
  methods. ``saliency``, ``input_x_gradient`` and ``grad_cam`` take no baseline and ignore it.
* Perturbation methods (``kernel_shap``, ``shapley_value_sampling``) use
  :func:`feature_mask_for`: tabular columns, 1-D segments or square image patches shared across
  channels. KernelShap fits one surrogate per example (looped here, with the same random stream
  order for teacher and student).
* ``grad_cam`` resolves ``config.layer`` with ``model.get_submodule``; with ``layer=None`` it uses
  the model's last ``nn.Conv1d`` / ``nn.Conv2d``. The map is ReLU'd, upsampled to the input's
  length (linear) or size (bilinear) and broadcast over the input channels. It needs ``[N, C, L]``
  or ``[N, C, H, W]`` inputs.
* ``noise_tunnel`` wraps integrated_gradients, deeplift_shap, saliency, input_x_gradient and
  grad_cam; ``nt_stdevs`` is in input units. It is refused for gradient_shap (already a noisy
  estimator) and for the perturbation methods (cost).
* Computation dtype: float32, unless the model's floating parameters are all of another dtype
  (e.g. a ``bf16-true`` model), in which case inputs are cast to that dtype; the result is float32.
"""
from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "METHODS",
    "BASELINE_KINDS",
    "NOISE_TUNNEL_TYPES",
    "TRAINING_MAP_KINDS",
    "MAX_FEATURES_WITHOUT_PATCHES",
    "AttributionConfig",
    "method_names",
    "make_baselines",
    "is_pure",
    "baseline_kind",
    "feature_mask_for",
    "conv_layer_names",
    "grad_cam_layer_name",
    "layer_output_shape",
    "attribute",
    "attribute_pair",
    "input_gradient_map",
]

METHODS: tuple[str, ...] = (
    "integrated_gradients",
    "gradient_shap",
    "deeplift_shap",
    "kernel_shap",
    "shapley_value_sampling",
    "saliency",
    "input_x_gradient",
    "grad_cam",
)
BASELINE_KINDS: tuple[str, ...] = ("auto", "zeros", "mean", "sample")
NOISE_TUNNEL_TYPES: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")
TRAINING_MAP_KINDS: tuple[str, ...] = (
    "saliency",
    "input_x_gradient",
    "grad_cam",
    "integrated_gradients",
)
#: Perturbation methods treat each pixel / time step as a feature only up to this many positions;
#: beyond it ``patch_size`` must be set.
MAX_FEATURES_WITHOUT_PATCHES = 256

_SHAP_METHODS = frozenset({"gradient_shap", "deeplift_shap"})
_PERTURBATION_METHODS = frozenset({"kernel_shap", "shapley_value_sampling"})
_BASELINE_FREE_METHODS = frozenset({"saliency", "input_x_gradient", "grad_cam"})
_NOISE_TUNNEL_METHODS = frozenset(
    {"integrated_gradients", "deeplift_shap", "saliency", "input_x_gradient", "grad_cam"}
)
#: gradient methods that draw no random numbers and put no hooks on the model
_PURE_METHODS = frozenset({"integrated_gradients", "saliency", "input_x_gradient"})


def method_names() -> list[str]:
    """The valid attribution-method names, in a stable order."""
    return list(METHODS)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(
            f"unknown attribution method {method!r}; valid methods are: {', '.join(METHODS)}"
        )
    return method


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class AttributionConfig:
    """How to explain a model: the method and its knobs (validated on construction).

    ``n_steps``: integration steps of integrated_gradients. ``internal_batch_size``: path points
    per forward pass for integrated_gradients (at least one point per input, so a forward holds
    ``max(internal_batch_size, N)`` examples; memory stays flat as ``n_steps`` grows) and the
    perturbation batch of the perturbation methods; ``None`` means all at once. ``n_samples``: random samples of gradient_shap, KernelShap
    surrogate samples, ShapleyValueSampling permutations. ``stdevs``: gradient_shap input noise.
    ``baseline`` / ``n_baselines``: see the module docstring. ``layer``: Grad-CAM layer (``None`` =
    the last conv). ``noise_tunnel`` / ``nt_samples`` / ``nt_stdevs``: optional SmoothGrad-style
    wrapper. ``patch_size``: feature-mask patch (images) or segment (1-D) size for the perturbation
    methods. ``seed``: seeds every random choice of the call.
    """

    method: str
    n_steps: int = 32
    internal_batch_size: int | None = 256
    n_samples: int = 16
    stdevs: float = 0.1
    baseline: str = "auto"
    n_baselines: int = 16
    layer: str | None = None
    noise_tunnel: str | None = None
    nt_samples: int = 8
    nt_stdevs: float = 0.1
    patch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_method(self.method)
        for name in ("n_steps", "n_samples", "n_baselines", "nt_samples"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"AttributionConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("internal_batch_size", "patch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(
                    f"AttributionConfig.{name} must be None or an integer >= 1, got {value!r}"
                )
        if not isinstance(self.stdevs, (int, float)) or isinstance(self.stdevs, bool) or self.stdevs < 0:
            raise ValueError(f"AttributionConfig.stdevs must be a number >= 0, got {self.stdevs!r}")
        if (
            not isinstance(self.nt_stdevs, (int, float))
            or isinstance(self.nt_stdevs, bool)
            or self.nt_stdevs <= 0
        ):
            raise ValueError(
                f"AttributionConfig.nt_stdevs must be a number > 0, got {self.nt_stdevs!r}"
            )
        if self.baseline not in BASELINE_KINDS:
            raise ValueError(
                f"unknown baseline {self.baseline!r}; valid baselines are: {', '.join(BASELINE_KINDS)}"
            )
        if self.baseline == "sample" and self.method not in _SHAP_METHODS:
            raise ValueError(
                f"baseline='sample' (a distribution of baselines) is only used by "
                f"{', '.join(sorted(_SHAP_METHODS))}; use 'zeros' or 'mean' for {self.method}"
            )
        if self.noise_tunnel is not None:
            if self.noise_tunnel not in NOISE_TUNNEL_TYPES:
                raise ValueError(
                    f"unknown noise_tunnel {self.noise_tunnel!r}; valid values are None, "
                    f"{', '.join(NOISE_TUNNEL_TYPES)}"
                )
            if self.method not in _NOISE_TUNNEL_METHODS:
                raise ValueError(
                    f"noise_tunnel is not supported for {self.method}; it wraps: "
                    f"{', '.join(m for m in METHODS if m in _NOISE_TUNNEL_METHODS)}"
                )
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"AttributionConfig.layer must be None or a submodule path, got {self.layer!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"AttributionConfig.seed must be an integer in [0, 2**32), got {self.seed!r}")


# --------------------------------------------------------------------------------------------
# baselines and feature masks


def make_baselines(
    kind: str,
    inputs: Tensor,
    train_inputs: Tensor | None = None,
    n: int = 16,
    seed: int = 0,
) -> Tensor:
    """Baselines for ``inputs`` ([N, ...]).

    ``"zeros"`` -> zeros ``[1, ...]``; ``"mean"`` -> training mean ``[1, ...]``; ``"sample"`` ->
    ``min(n, len(train_inputs))`` training inputs drawn without replacement by a local generator
    seeded with ``seed`` (same seed, same rows). Returned on ``inputs``' device and dtype.
    """
    if kind not in ("zeros", "mean", "sample"):
        raise ValueError(f"unknown baseline kind {kind!r}; valid kinds are: zeros, mean, sample")
    feature_shape = tuple(inputs.shape[1:])
    if kind == "zeros":
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
            if not _is_int(n) or n < 1:
                raise ValueError(f"n must be an integer >= 1, got {n!r}")
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            idx = torch.randperm(train.shape[0], generator=generator)[: min(n, train.shape[0])]
            out = train[idx.to(train.device)]
        return out.to(device=inputs.device, dtype=inputs.dtype).clone()


def feature_mask_for(inputs: Tensor, patch_size: int | None = None) -> Tensor:
    """Feature groups for perturbation methods, as a LongTensor broadcastable to ``inputs``.

    * tabular ``[N, F]`` -> ``[1, F]``, each column its own feature (``patch_size`` ignored);
    * 1-D signals ``[N, C, L]`` -> ``[1, 1, L]``, contiguous segments of ``patch_size`` shared
      across channels (``None``: each position, allowed up to ``MAX_FEATURES_WITHOUT_PATCHES``);
    * images ``[N, C, H, W]`` -> ``[1, 1, H, W]``, ``patch_size`` x ``patch_size`` squares shared
      across channels (``None``: each pixel, allowed up to ``MAX_FEATURES_WITHOUT_PATCHES``
      pixels). A patch size that does not divide the size leaves smaller patches at the edges; a
      patch larger than the (smallest) size is an error.
    """
    if patch_size is not None and (not _is_int(patch_size) or patch_size < 1):
        raise ValueError(f"patch_size must be None or an integer >= 1, got {patch_size!r}")
    device = inputs.device
    if inputs.dim() == 2:
        return torch.arange(inputs.shape[1], device=device).view(1, -1)
    if inputs.dim() == 3:
        length = inputs.shape[2]
        if patch_size is None:
            if length > MAX_FEATURES_WITHOUT_PATCHES:
                raise ValueError(
                    f"a 1-D input of length {length} has more than {MAX_FEATURES_WITHOUT_PATCHES} "
                    f"positions: set patch_size (e.g. AttributionConfig(patch_size=...)) to group "
                    f"them into segments"
                )
            patch_size = 1
        if patch_size > length:
            raise ValueError(f"patch_size={patch_size} exceeds the input length {length}")
        return (torch.arange(length, device=device) // patch_size).view(1, 1, length)
    if inputs.dim() == 4:
        height, width = inputs.shape[2], inputs.shape[3]
        if patch_size is None:
            if height * width > MAX_FEATURES_WITHOUT_PATCHES:
                raise ValueError(
                    f"a {height}x{width} image has more than {MAX_FEATURES_WITHOUT_PATCHES} pixels: "
                    f"set patch_size (e.g. AttributionConfig(patch_size=4)) so perturbation methods "
                    f"use square patches as features"
                )
            patch_size = 1
        if patch_size > min(height, width):
            raise ValueError(
                f"patch_size={patch_size} exceeds the image size {height}x{width}"
            )
        cols = -(-width // patch_size)
        rows = torch.arange(height, device=device) // patch_size
        columns = torch.arange(width, device=device) // patch_size
        return (rows[:, None] * cols + columns[None, :]).view(1, 1, height, width)
    raise ValueError(
        f"feature masks support [N, F], [N, C, L] and [N, C, H, W] inputs, got shape {list(inputs.shape)}"
    )


# --------------------------------------------------------------------------------------------
# context helpers


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule's own flag is restored afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and ``device`` if CUDA), numpy and ``random``; restore them afterwards."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _no_autocast(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return torch.autocast(device_type="cpu", enabled=False)


def _model_device_dtype(model: nn.Module, fallback: torch.device) -> tuple[torch.device, torch.dtype]:
    params = [p for p in model.parameters()]
    device = params[0].device if params else fallback
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return device, dtype


def _as_target(target: Tensor | int, n: int, device: torch.device) -> Tensor:
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((n,), target, dtype=torch.long, device=device)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a LongTensor [N] or an int, got {type(target).__name__}")
    target = target.detach().clone().to(device=device, dtype=torch.long).reshape(-1)
    if target.numel() == 1 and n != 1:
        target = target.expand(n).clone()
    if target.numel() != n:
        raise ValueError(f"target must have one class index per input ({n}), got {target.numel()}")
    return target


def conv_layer_names(model: nn.Module) -> list[str]:
    """Submodule paths of the model's ``nn.Conv1d`` / ``nn.Conv2d`` layers (Grad-CAM candidates)."""
    return [name for name, m in model.named_modules() if name and isinstance(m, (nn.Conv1d, nn.Conv2d))]


def grad_cam_layer_name(model: nn.Module, layer: str | None) -> str | None:
    """The submodule path Grad-CAM explains: ``layer`` if the model has it, the last conv layer
    when ``layer`` is None; ``None`` when there is no such submodule."""
    if layer is None:
        convs = conv_layer_names(model)
        return convs[-1] if convs else None
    try:
        model.get_submodule(layer)
    except AttributeError:
        return None
    return layer


@torch.no_grad()
def layer_output_shape(model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shape of submodule ``layer``'s output for a zero input ``[2, *input_shape]`` (eval mode, no
    grad; every train/eval flag is restored); ``None`` if the layer does not run in ``forward``."""
    device, dtype = _model_device_dtype(model, torch.device("cpu"))
    captured: list[tuple[int, ...]] = []

    def hook(_module, _inp, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        captured.append(tuple(out.shape))

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.inference_mode(False), _eval_mode(model), _no_autocast(device.type):
            model(torch.zeros((2, *input_shape), device=device, dtype=dtype))
    finally:
        handle.remove()
    return captured[-1] if captured else None


def _resolve_layer(model: nn.Module, layer: str | None) -> nn.Module:
    if layer is None:
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        if not convs:
            names = [name for name, _ in model.named_modules() if name]
            raise ValueError(
                f"grad_cam needs a layer and the model has no Conv1d/Conv2d to default to; set "
                f"layer to one of: {', '.join(names)}"
            )
        return convs[-1]
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        raise ValueError(
            f"model has no submodule {layer!r} for grad_cam; valid names are: {', '.join(names)}"
        ) from None


def _check_spatial(inputs: Tensor, what: str) -> None:
    if inputs.dim() not in (3, 4):
        raise ValueError(
            f"{what} needs spatial inputs [N, C, L] or [N, C, H, W], got shape {list(inputs.shape)}"
        )


def _upsample_cam(cam: Tensor, inputs: Tensor) -> Tensor:
    """[N, 1, *spatial'] -> inputs' shape (interpolated, broadcast over channels)."""
    if cam.dim() != inputs.dim():
        raise ValueError(
            f"grad_cam layer output has shape {list(cam.shape)}; it must be spatial like the "
            f"input {list(inputs.shape)} (choose a convolutional layer)"
        )
    if inputs.dim() == 3:
        cam = F.interpolate(cam, size=inputs.shape[2], mode="linear", align_corners=False)
    else:
        from captum.attr import LayerAttribution

        cam = LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), interpolate_mode="bilinear")
    return cam.expand(-1, inputs.shape[1], *inputs.shape[2:])


# --------------------------------------------------------------------------------------------
# Captum runners: (model, x, target, config, baselines) -> attributions


def _run_integrated_gradients(model, x, target, config, baselines):
    from captum.attr import IntegratedGradients

    explainer = IntegratedGradients(model)
    kwargs = {"baselines": baselines, "n_steps": config.n_steps}
    if config.internal_batch_size is not None:
        kwargs["internal_batch_size"] = max(config.internal_batch_size, x.shape[0])
    return explainer, kwargs


def _run_gradient_shap(model, x, target, config, baselines):
    from captum.attr import GradientShap

    return GradientShap(model), {
        "baselines": baselines,
        "n_samples": config.n_samples,
        "stdevs": float(config.stdevs),
    }


def _run_deeplift_shap(model, x, target, config, baselines):
    from captum.attr import DeepLift, DeepLiftShap

    if baselines.shape[0] > 1:
        return DeepLiftShap(model), {"baselines": baselines}
    return DeepLift(model), {"baselines": baselines}


def _run_saliency(model, x, target, config, baselines):
    from captum.attr import Saliency

    return Saliency(model), {"abs": False}


def _run_input_x_gradient(model, x, target, config, baselines):
    from captum.attr import InputXGradient

    return InputXGradient(model), {}


def _run_grad_cam(model, x, target, config, baselines):
    from captum.attr import LayerGradCam

    _check_spatial(x, "grad_cam")
    layer = _resolve_layer(model, config.layer)
    return LayerGradCam(model, layer), {"relu_attributions": True}


_GRADIENT_RUNNERS: dict[str, Callable] = {
    "integrated_gradients": _run_integrated_gradients,
    "gradient_shap": _run_gradient_shap,
    "deeplift_shap": _run_deeplift_shap,
    "saliency": _run_saliency,
    "input_x_gradient": _run_input_x_gradient,
    "grad_cam": _run_grad_cam,
}


def _perturbations_per_eval(config: AttributionConfig, batch: int, cap: int) -> int:
    budget = config.internal_batch_size if config.internal_batch_size is not None else 64 * batch
    return max(1, min(cap, budget // max(batch, 1)))


def _attribute_perturbation(model, x, target, config, baselines) -> Tensor:
    from captum.attr import KernelShap, ShapleyValueSampling

    mask = feature_mask_for(x, config.patch_size)
    # materialised: Captum's ShapleyValueSampling flattens the mask with .view(-1), which fails on
    # the stride-0 channel axis of an expanded [1, 1, ...] mask when the input has several channels
    full_mask = mask.expand(1, *x.shape[1:]).contiguous()
    if config.method == "shapley_value_sampling":
        num_features = int(mask.max()) + 1
        return ShapleyValueSampling(model).attribute(
            x,
            baselines=baselines,
            target=target,
            feature_mask=full_mask,
            n_samples=config.n_samples,
            perturbations_per_eval=_perturbations_per_eval(config, x.shape[0], num_features),
        )
    explainer = KernelShap(model)
    out = []
    for i in range(x.shape[0]):
        out.append(
            explainer.attribute(
                x[i : i + 1],
                baselines=baselines,
                target=target[i : i + 1],
                feature_mask=full_mask,
                n_samples=config.n_samples,
                perturbations_per_eval=_perturbations_per_eval(config, 1, config.n_samples),
            )
        )
    return torch.cat(out, dim=0)


def _summed_gradients(forward_fn, inputs, target_ind=None, additional_forward_args=None):
    """Captum's ``compute_gradients`` with one backward seed for all outputs.

    Captum differentiates ``unbind(outputs)``: one scalar, and one ``ones_like`` seed built in
    Python, per sample and step. ``grad(outputs, inputs, ones_like(outputs))`` is the same sum of
    gradients in one call; for a small model it halves the time of integrated gradients.
    """
    from captum._utils.common import _run_forward

    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if outputs[0].numel() != 1:
            raise ValueError("attribution needs a target class: the model returns several outputs per sample")
        return torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs))


def _use_one_backward_seed(explainer: object) -> None:
    """Swap Captum's default gradient function for :func:`_summed_gradients` (same values)."""
    from captum._utils.gradient import compute_gradients

    if getattr(explainer, "gradient_func", None) is compute_gradients:
        explainer.gradient_func = _summed_gradients


def _attribute_prepared(
    model: nn.Module, x: Tensor, target: Tensor, config: AttributionConfig, baselines: Tensor | None
) -> Tensor:
    """Run the method; ``x``, ``target`` and ``baselines`` are ready (device, dtype, no inference)."""
    with ExitStack() as stack:
        stack.enter_context(_eval_mode(model))
        if not is_pure(config):  # random draws are seeded; Captum's hook warnings silenced
            stack.enter_context(_seeded(config.seed, x.device))
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks.*")
            warnings.filterwarnings("ignore", message=".*Input Tensor.*did not already require grad.*")
        if config.method in _PERTURBATION_METHODS:
            result = _attribute_perturbation(model, x, target, config, baselines)
        else:
            explainer, kwargs = _GRADIENT_RUNNERS[config.method](model, x, target, config, baselines)
            _use_one_backward_seed(explainer)
            inputs = x.clone().requires_grad_(True)
            if config.noise_tunnel is not None:
                from captum.attr import NoiseTunnel

                nt_kwargs = {
                    "nt_type": config.noise_tunnel,
                    "nt_samples": config.nt_samples,
                    "stdevs": float(config.nt_stdevs),
                }
                if config.internal_batch_size is not None:
                    nt_kwargs["nt_samples_batch_size"] = max(
                        1, min(config.nt_samples, config.internal_batch_size // x.shape[0])
                    )
                result = NoiseTunnel(explainer).attribute(inputs, target=target, **nt_kwargs, **kwargs)
            else:
                result = explainer.attribute(inputs, target=target, **kwargs)
            if config.method == "grad_cam":
                result = _upsample_cam(result, x)
    return result.detach().to(torch.float32).contiguous()


def is_pure(config: AttributionConfig) -> bool:
    """Whether a call draws no random numbers and registers no hooks on the model (integrated
    gradients, saliency, input x gradient without a noise tunnel): it then leaves the RNGs,
    warning filters and module hooks alone, so it may run on another thread beside training (off
    the main thread, the deterministic-algorithms flag is never relaxed either)."""
    return config.method in _PURE_METHODS and config.noise_tunnel is None


def baseline_kind(config: AttributionConfig, has_train_inputs: bool) -> str | None:
    """The baseline a call will use (``zeros``, ``mean`` or ``sample``; ``None`` for methods that
    take none); ``auto`` resolves to ``sample`` for the SHAP methods when training data are given."""
    if config.method in _BASELINE_FREE_METHODS:
        return None
    if config.baseline == "auto":
        return "sample" if config.method in _SHAP_METHODS and has_train_inputs else "zeros"
    return config.baseline


def _prepare(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    config: AttributionConfig,
    train_inputs: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Clone inputs/target (outside inference mode), cast, and build the baselines."""
    if not isinstance(config, AttributionConfig):
        raise ValueError(f"config must be an AttributionConfig, got {type(config).__name__}")
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] < 1:
        raise ValueError("inputs must be a tensor [N, ...] with N >= 1")
    device, dtype = _model_device_dtype(model, inputs.device)
    x = inputs.detach().to(device=device, dtype=dtype).clone()
    tgt = _as_target(target, x.shape[0], device)
    kind = baseline_kind(config, train_inputs is not None)
    if kind is None:
        return x, tgt, None
    train = None if train_inputs is None else train_inputs.detach().to(device=device, dtype=dtype)
    baselines = make_baselines(kind, x, train, config.n_baselines, config.seed)
    return x, tgt, baselines


@contextmanager
def _attribution_context(device: torch.device) -> Iterator[None]:
    with torch.inference_mode(False), torch.enable_grad(), _no_autocast(device.type), _deterministic_warn_only():
        yield


@contextmanager
def _deterministic_warn_only() -> Iterator[None]:
    """Under ``Trainer(deterministic=True)`` some attribution kernels (DeepLift through max-pool
    uses max_unpool) have no deterministic implementation; warn instead of failing the run. Only
    on the main thread: the flag is process-wide, and training on the main thread must keep it
    (off the main thread such a kernel raises)."""
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    strict = strict and threading.current_thread() is threading.main_thread()  # the flag is process-wide
    if strict:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        if strict:
            torch.use_deterministic_algorithms(True)


def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    config: AttributionConfig,
    *,
    train_inputs: Tensor | None = None,
) -> Tensor:
    """Attributions of ``model`` for ``target`` (LongTensor [N]) on ``inputs`` [N, ...].

    Returns a detached float32 tensor of ``inputs``' shape, on ``inputs``' device. Safe under
    no_grad, inference_mode and autocast; restores train/eval flags; leaves ``.grad`` alone.
    """
    with _attribution_context(inputs.device):
        x, tgt, baselines = _prepare(model, inputs, target, config, train_inputs)
        with _no_autocast(x.device.type):  # the model may live on another device type
            result = _attribute_prepared(model, x, tgt, config, baselines)
        return result.to(inputs.device)


def attribute_pair(
    teacher: nn.Module,
    student: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    config: AttributionConfig,
    *,
    train_inputs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(attribute(teacher, ...), attribute(student, ...))`` with the same inputs, target,
    baselines and seed, so random methods draw identical noise for both."""
    return (
        attribute(teacher, inputs, target, config, train_inputs=train_inputs),
        attribute(student, inputs, target, config, train_inputs=train_inputs),
    )


# --------------------------------------------------------------------------------------------
# training-time maps


def _target_score(logits: Tensor, target: Tensor) -> Tensor:
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits [N, classes], got shape {list(logits.shape)}")
    return logits.gather(1, target.view(-1, 1)).sum()


def input_gradient_map(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    kind: str,
    create_graph: bool,
    layer: str | None = None,
    *,
    n_steps: int = 8,
    baseline: Tensor | None = None,
) -> Tensor:
    """Differentiable explanation map with the inputs' shape, for training-time matching.

    ``kind``: ``"saliency"`` (d logit_target / d x), ``"input_x_gradient"`` (x * gradient),
    ``"grad_cam"`` (ReLU'd Grad-CAM on ``layer`` -- default the last conv -- upsampled to the input
    size and broadcast over channels), ``"integrated_gradients"`` (midpoint Riemann sum with
    ``n_steps`` points from ``baseline``, default zeros, computed in one batched forward).

    With ``create_graph=True`` the map stays in the autograd graph, so a loss on it trains the
    model's parameters; with ``False`` the map is detached. Runs in the model's current train/eval
    mode and under the current autocast (it is one more forward of the model); grad is enabled
    inside, so it also works for a frozen teacher under ``no_grad``. Parameter ``.grad`` is not
    touched (gradients are taken w.r.t. the inputs with ``torch.autograd.grad``).
    """
    if kind not in TRAINING_MAP_KINDS:
        raise ValueError(
            f"unknown map kind {kind!r}; valid kinds are: {', '.join(TRAINING_MAP_KINDS)}"
        )
    if not _is_int(n_steps) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach()
        if x.is_inference():
            x = x.clone()
        tgt = _as_target(target, x.shape[0], x.device)

        if kind in ("saliency", "input_x_gradient"):
            x = x.requires_grad_(True) if not x.requires_grad else x
            score = _target_score(model(x), tgt)
            (grad,) = torch.autograd.grad(score, x, create_graph=create_graph)
            result = grad if kind == "saliency" else x * grad

        elif kind == "integrated_gradients":
            base = torch.zeros_like(x) if baseline is None else baseline.detach().to(x).expand_as(x)
            alphas = (torch.arange(n_steps, device=x.device, dtype=x.dtype) + 0.5) / n_steps
            shape = (n_steps,) + (1,) * x.dim()
            path = base.unsqueeze(0) + alphas.view(shape) * (x - base).unsqueeze(0)
            path = path.reshape(n_steps * x.shape[0], *x.shape[1:]).requires_grad_(True)
            score = _target_score(model(path), tgt.repeat(n_steps))
            (grad,) = torch.autograd.grad(score, path, create_graph=create_graph)
            mean_grad = grad.view(n_steps, *x.shape).mean(dim=0)
            result = (x - base) * mean_grad

        else:  # grad_cam
            _check_spatial(x, "grad_cam")
            module = _resolve_layer(model, layer)
            captured: list[Tensor] = []

            def hook(_module, _inp, output):
                captured.append(output[0] if isinstance(output, (tuple, list)) else output)

            handle = module.register_forward_hook(hook)
            try:
                x = x.requires_grad_(True)  # so the activation is in a graph even if frozen
                logits = model(x)
            finally:
                handle.remove()
            if not captured:
                raise ValueError("the grad_cam layer did not run in the model's forward")
            activation = captured[-1]
            score = _target_score(logits, tgt)
            (grad,) = torch.autograd.grad(score, activation, create_graph=create_graph)
            weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
            cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
            if cam.dim() != x.dim():
                raise ValueError(
                    f"grad_cam layer output has shape {list(activation.shape)}; it must be spatial "
                    f"like the input {list(x.shape)} (choose a convolutional layer)"
                )
            if x.dim() == 3:
                cam = F.interpolate(cam, size=x.shape[2], mode="linear", align_corners=False)
            else:
                cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
            result = cam.expand(-1, x.shape[1], *x.shape[2:])

        result = result.to(inputs.dtype if inputs.is_floating_point() else torch.float32)
        return result if create_graph else result.detach()
