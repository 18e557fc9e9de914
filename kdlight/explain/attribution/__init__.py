"""Attribution methods: one registry, one ``attribute`` call, one context.

* :func:`attribute` -- *evaluation-time* attributions (Captum) of one model by method name, safe
  in any surrounding context: ``torch.no_grad`` (validation inside ``fit``),
  ``torch.inference_mode`` (``trainer.validate`` / ``test``; inference-tensor inputs are cloned),
  an active ``torch.autocast`` (it is disabled; the computation runs in float32). The model is
  switched to eval mode for the call and every submodule's train/eval flag is restored
  afterwards; parameter ``.grad`` and ``requires_grad`` are left untouched. Random methods are
  seeded from ``config.seed`` inside a forked RNG, so teacher and student explained with the
  same config see identical randomness and the global RNG state is not changed. The result is a
  detached float32 tensor with the shape of ``inputs``.
* :func:`input_gradient_map` -- *training-time* maps (saliency, input x gradient, Grad-CAM, a
  few-step integrated gradients) that a loss can train through.
* :data:`METHODS` -- the registered methods (:class:`Method` subclasses, one file per family:
  ``gradient`` saliency / input x gradient, ``gradcam``, ``reference`` integrated gradients /
  GradientSHAP / DeepLiftSHAP, ``perturbation`` KernelSHAP / Shapley value sampling, ``lime``,
  ``occlusion``, ``lrp``), each with its metadata (``METHODS[name].local``, ``.pure``, ...).
  A method may also be named by the class path of a ``Method`` subclass
  (``methods: [saliency, my_package.module.MyMethod]`` in YAML).
* Token ids (the text modality, :mod:`kdlight.explain.attribution.tokens`): gradient methods run at
  the model's embedding layer (their ``layer_variant``: Captum's layer methods) and are summed over
  the hidden dimension; perturbation methods replace real tokens by the reference token; padding is
  0 in every map; the methods that cannot explain tokens are refused in one line.

Baselines (``AttributionConfig.baseline``): ``"zeros"`` -- the modality's reference input (zeros)
of shape ``[1, ...]``; ``"mean"`` -- the training mean, shape ``[1, ...]`` (needs
``train_inputs``); ``"sample"`` -- a fixed random sample of ``n_baselines`` training inputs (the
distribution the SHAP-style methods average over; needs ``train_inputs``); ``"auto"`` (default)
-- ``"sample"`` for methods with ``baseline_distribution`` (gradient_shap, deeplift_shap) when
``train_inputs`` are given, ``"zeros"`` otherwise. Methods without ``takes_baseline`` ignore it.
Computation dtype: float32, unless the model's floating parameters are all of another dtype (e.g.
a ``bf16-true`` model), in which case floating inputs are cast to that dtype; integer inputs are
never cast; the result is float32.
"""

# the method families register themselves on import, in this order (the order of method_names())
from kdlight.explain.attribution import gradient, gradcam, reference, perturbation, lime, occlusion, lrp  # noqa: F401, I001
from kdlight.explain.attribution.api import attribute
from kdlight.explain.attribution.base import CaptumMethod, Method
from kdlight.explain.attribution.baselines import make_baselines
from kdlight.explain.attribution.config import BASELINE_KINDS, NOISE_TUNNEL_TYPES, AttributionConfig
from kdlight.explain.attribution.gradcam import conv_layer_names, grad_cam_layer_name, layer_output_shape
from kdlight.explain.attribution.registry import METHODS, baseline_kind, get_method, is_pure, method_names, register
from kdlight.explain.attribution.training import input_gradient_map, training_map_kinds

#: methods with a differentiable training map (for :func:`input_gradient_map`)
TRAINING_MAP_KINDS: tuple[str, ...] = training_map_kinds()

__all__ = [
    "METHODS",
    "BASELINE_KINDS",
    "NOISE_TUNNEL_TYPES",
    "TRAINING_MAP_KINDS",
    "AttributionConfig",
    "Method",
    "CaptumMethod",
    "attribute",
    "input_gradient_map",
    "make_baselines",
    "method_names",
    "get_method",
    "register",
    "is_pure",
    "baseline_kind",
    "conv_layer_names",
    "grad_cam_layer_name",
    "layer_output_shape",
]
