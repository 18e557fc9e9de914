"""The callback's settings: checked on construction, and at setup against the models and inputs.

Every error is one line that names the option to change.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import fields
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from kdlight.explain.methods import (
    MAX_FEATURES_WITHOUT_PATCHES,
    AttributionConfig,
    conv_layer_names,
    feature_mask_for,
    grad_cam_layer_name,
    layer_output_shape,
    method_names,
)

TARGETS = ("teacher", "label", "student")
ROLES = ("teacher", "student")
_CONFIG_FIELDS = {f.name for f in fields(AttributionConfig)} - {"method", "seed"}
_LAYER_OPTIONS = ("layer", "teacher_layer", "student_layer")
_PERTURBATION_METHODS = ("kernel_shap", "shapley_value_sampling")


def check_arguments(
    methods: list[str], target: str, counts: dict[str, Any], method_args: dict[str, dict[str, Any]], seed: int
) -> None:
    """The checks that need no model: method names, target, positive counts, ``method_args``."""
    valid = method_names()
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise ValueError(f"unknown attribution method(s) {unknown}; valid methods are: {', '.join(valid)}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ExplanationAgreement {name} must be an integer >= 1, got {value!r}")
    for method, args in method_args.items():
        if method not in valid:  # a known method that is not selected is fine (configs stay overridable)
            raise ValueError(
                f"method_args names {method!r}, which is not an attribution method; valid methods are: {', '.join(valid)}"
            )
        bad = set(args) - _CONFIG_FIELDS - set(_LAYER_OPTIONS)
        if bad:
            options = sorted((_CONFIG_FIELDS - {"layer"}) | (set(_LAYER_OPTIONS) if method == "grad_cam" else set()))
            raise ValueError(
                f"unknown option(s) {sorted(bad)} for {method} in method_args; valid: {', '.join(options)}"
            )
        layers = [name for name in _LAYER_OPTIONS if name in args]
        if layers and method != "grad_cam":
            raise ValueError(
                f"method_args: {{{method}: {{{layers[0]}: ...}}}} has no effect: only grad_cam explains a layer; remove it"
            )
    for method in methods:  # every value check of AttributionConfig, now rather than at the first run
        for role in ROLES:
            try:
                attribution_config(method_args, method, role, seed)
            except (TypeError, ValueError) as err:
                raise ValueError(f"ExplanationAgreement method_args for {method}: {err}") from None


def attribution_config(method_args: dict[str, dict[str, Any]], method: str, role: str, seed: int) -> AttributionConfig:
    """The :class:`AttributionConfig` of ``method`` for the ``role`` model (its own Grad-CAM layer)."""
    args = dict(method_args.get(method, {}))
    layer = args.pop(f"{role}_layer", None)
    args.pop("teacher_layer", None), args.pop("student_layer", None)
    if layer is not None:
        args["layer"] = layer
    return AttributionConfig(method=method, seed=seed, **args)


def check_settings(
    trainer: Trainer,
    pl_module: LightningModule,
    input_shape: tuple[int, ...] | None,
    methods: list[str],
    method_args: dict[str, dict[str, Any]],
    k: int,
) -> None:
    """Refuse settings that cannot work with these models (and, when ``input_shape`` -- one
    sample's shape -- is known, these inputs)."""
    for method in methods:
        _check_baseline(method, attribution_config(method_args, method, "teacher", 0), trainer)
    if "grad_cam" in methods:
        for role in ROLES:
            _check_grad_cam_layer(method_args, role, getattr(pl_module, role), input_shape)
    if input_shape is None:
        return
    num_features = math.prod(input_shape)
    if k > num_features:
        raise ValueError(
            f"ExplanationAgreement k={k} exceeds the {num_features} features of an input of shape "
            f"{list(input_shape)}: every top-k set would hold all features and top-k agreement would be 1.0 "
            f"for any maps; set k <= {num_features} (e.g. k: {max(1, num_features // 8)})"
        )
    for method in methods:
        if method in _PERTURBATION_METHODS:
            patch_size = attribution_config(method_args, method, "teacher", 0).patch_size
            try:
                feature_mask_for(torch.empty((1, *input_shape)), patch_size)
            except ValueError:
                raise ValueError(_patch_problem(method, input_shape, patch_size)) from None


def known_input_shape(trainer: Trainer, pl_module: LightningModule) -> tuple[int, ...] | None:
    """One sample's shape where it is known before the data are loaded: a kdlight datamodule's
    ``input_shape`` or the module's ``example_input_array``; ``None`` otherwise."""
    shape = getattr(trainer.datamodule, "input_shape", None)
    if shape is not None:
        return tuple(int(n) for n in shape)
    example = getattr(pl_module, "example_input_array", None)
    return tuple(example.shape[1:]) if isinstance(example, Tensor) else None


def _check_baseline(method: str, config: AttributionConfig, trainer: Trainer) -> None:
    """A training-mean / sampled baseline needs a datamodule with ``train_inputs()``."""
    if config.baseline in ("mean", "sample") and not hasattr(trainer.datamodule, "train_inputs"):
        where = type(trainer.datamodule).__name__ if trainer.datamodule is not None else "no datamodule"
        raise ValueError(
            f"ExplanationAgreement {method}: baseline {config.baseline!r} needs the training inputs, but the data "
            f"({where}) has no train_inputs(); set method_args: {{{method}: {{baseline: zeros}}}} "
            f"or fit with a kdlight datamodule"
        )


def _layer_option(method_args: dict[str, dict[str, Any]], role: str) -> str:
    """Where the Grad-CAM layer of ``role`` is set (or would be)."""
    args = method_args.get("grad_cam", {})
    if f"{role}_layer" in args or "layer" not in args:
        return f"method_args: {{grad_cam: {{{role}_layer: <name>}}}}"
    return f"method_args: {{grad_cam: {{layer: <name>}}}} (or {role}_layer: <name> for the {role} alone)"


def _check_grad_cam_layer(
    method_args: dict[str, dict[str, Any]], role: str, model, input_shape: tuple[int, ...] | None
) -> None:
    """The model has the Grad-CAM layer, and (shape known) it runs and gives spatial maps."""
    layer = attribution_config(method_args, "grad_cam", role, 0).layer
    what = f"the {role} ({type(model).__name__})"
    option = _layer_option(method_args, role)
    name = grad_cam_layer_name(model, layer)
    if name is None:
        missing = f"has no layer {layer!r}" if layer is not None else "has no Conv1d/Conv2d layer to default to"
        raise ValueError(
            f"ExplanationAgreement grad_cam: {what} {missing}; {_layer_hint(model, layer)}; set it with {option}"
        )
    if input_shape is None:
        return
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"ExplanationAgreement grad_cam needs image [C, H, W] or 1-D signal [C, L] inputs, these are "
            f"{list(input_shape)}; remove grad_cam from methods"
        )
    if any(p.is_meta for p in model.parameters()):
        return  # not materialised yet (e.g. created in configure_model): checked at the first run
    try:
        shape = layer_output_shape(model, name, input_shape)
    except (RuntimeError, ValueError, TypeError):  # the model rejects such inputs: training will say so itself
        return
    if shape is None:
        raise ValueError(
            f"ExplanationAgreement grad_cam: layer {name!r} of {what} does not run in its forward; "
            f"{_layer_hint(model, None)}; set another with {option}"
        )
    if len(shape) != len(input_shape) + 1:
        raise ValueError(
            f"ExplanationAgreement grad_cam: layer {name!r} of {what} gives outputs of shape {list(shape[1:])}, "
            f"not maps like the inputs {list(input_shape)}; {_layer_hint(model, None)}; set a "
            f"convolutional one with {option}"
        )


def _patch_problem(method: str, input_shape: tuple[int, ...], patch_size: int | None) -> str:
    """One line on why ``patch_size`` does not fit inputs of ``input_shape`` ([C, L] / [C, H, W])."""
    sizes = input_shape[1:]
    fitting = next(
        p
        for p in range(1, min(sizes) + 1)
        if math.prod(-(-n // p) for n in sizes) <= MAX_FEATURES_WITHOUT_PATCHES or p == min(sizes)
    )
    if patch_size is None:
        reason = (
            f"its {math.prod(sizes)} positions are more than the {MAX_FEATURES_WITHOUT_PATCHES} features allowed "
            f"without patches"
        )
    else:
        reason = f"patch_size={patch_size} is larger than the input's {'x'.join(map(str, sizes))} positions"
    return (
        f"ExplanationAgreement {method} on inputs of shape {list(input_shape)}: {reason}; set "
        f"method_args: {{{method}: {{patch_size: {fitting}}}}} (square patches, or 1-D segments, as features)"
    )


def _layer_hint(model, layer: str | None) -> str:
    """A few layer names to choose from: those close to ``layer``, else the conv layers."""
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(layer, names, n=4, cutoff=0.6) if layer else []
    if close:
        return f"close names: {', '.join(close)}"
    convs = conv_layer_names(model)
    pool, what = (convs, "conv layers") if convs else (names, "layers")
    shown = ", ".join(pool[-10:]) if pool else "none"
    return f"its {what}: {'..., ' if len(pool) > 10 else ''}{shown}"
