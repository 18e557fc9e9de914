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

from kdlight.core.datamodule import data_capabilities
from kdlight.core.modality import MAX_FEATURES_WITHOUT_PATCHES, Modality, Text
from kdlight.explain.attribution import (
    METHODS,
    AttributionConfig,
    Method,
    conv_layer_names,
    get_method,
    grad_cam_layer_name,
    layer_output_shape,
)
from kdlight.explain.attribution.tokens import check_token_method, explains_tokens
from kdlight.explain.metrics import MetricSpec, metric_names, metric_spec

TARGETS = ("teacher", "label", "student")
ROLES = ("teacher", "student")
_CONFIG_FIELDS = {f.name for f in fields(AttributionConfig)} - {"method", "seed"}
_LAYER_OPTIONS = ("layer", "teacher_layer", "student_layer")
#: the settings of ``ExplanationAgreement(stability=...)`` (the seed defaults to the callback's)
STABILITY_OPTIONS = ("noise_scale", "n_samples", "seed", "agreement")


def check_arguments(
    methods: list[str], target: str, counts: dict[str, Any], method_args: dict[str, dict[str, Any]], seed: int
) -> None:
    """The checks that need no model: method names, target, positive counts, ``method_args``."""
    if not methods:
        raise ValueError(f"ExplanationAgreement methods is empty; valid methods are: {', '.join(METHODS)}")
    for method in methods:
        _method(method, "methods")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ExplanationAgreement {name} must be an integer >= 1, got {value!r}")
    for method, args in method_args.items():
        # a known method that is not selected is fine (configs stay overridable)
        explains_layer = _method(method, "method_args").explains_layer
        bad = set(args) - _CONFIG_FIELDS - set(_LAYER_OPTIONS)
        if bad:
            options = sorted((_CONFIG_FIELDS - {"layer"}) | (set(_LAYER_OPTIONS) if explains_layer else set()))
            raise ValueError(
                f"unknown option(s) {sorted(bad)} for {method} in method_args; valid: {', '.join(options)}"
            )
        layers = [name for name in _LAYER_OPTIONS if name in args]
        if layers and not explains_layer:
            explainers = [name for name, m in METHODS.items() if m.explains_layer]
            verb = "explains" if len(explainers) == 1 else "explain"
            raise ValueError(
                f"method_args: {{{method}: {{{layers[0]}: ...}}}} has no effect: only {', '.join(explainers)} {verb} "
                "a layer; remove it"
            )
    for method in methods:  # every value check of AttributionConfig, now rather than at the first run
        for role in ROLES:
            try:
                attribution_config(method_args, method, role, seed)
            except (TypeError, ValueError) as err:
                raise ValueError(f"ExplanationAgreement method_args for {method}: {err}") from None


def _method(name: str, option: str):
    """The registered method (or class path) ``name``, or a one-line error naming ``option``."""
    try:
        return get_method(name)
    except ValueError as err:
        raise ValueError(f"ExplanationAgreement {option}: {err}") from None


def metric_specs(metrics: list[str] | None) -> list[MetricSpec]:
    """The agreement metrics to log: registered names or import paths of metrics comparing two
    models' maps (default: every registered one)."""
    names = metric_names("maps") if metrics is None else list(metrics)
    if not names:
        raise ValueError(f"ExplanationAgreement metrics is empty; valid: {', '.join(metric_names('maps'))}")
    try:
        specs = [metric_spec(name) for name in names]
    except ValueError as err:
        raise ValueError(f"ExplanationAgreement metrics: {err}") from None
    for name, spec in zip(names, specs):
        if spec.compares != "maps":
            raise ValueError(
                f"ExplanationAgreement metrics: {name!r} compares {spec.compares}, not two models' maps; "
                f"valid: {', '.join(metric_names('maps'))}"
            )
    return specs


def stability_options(stability: dict[str, Any] | None, seed: int) -> dict[str, dict[str, Any]] | None:
    """The options of the ``sensitivity_max`` and ``self_agreement`` metrics for ``stability``
    (``None``: off): the given ``noise_scale`` / ``n_samples`` (else :mod:`kdlight.explain.metrics.stability`'s
    defaults), ``seed`` (default: the callback's; the same noise for teacher and student) and the
    ``agreement`` metric of ``self_agreement`` (default ``rank_correlation``; a top-k one gets the
    callback's ``k``, see :meth:`kdlight.explain.callback.measure.Measure.stability`)."""
    if stability is None:
        return None
    if not isinstance(stability, dict):
        raise ValueError(f"ExplanationAgreement stability must be a dict or None, got {type(stability).__name__}")
    unknown = sorted(set(stability) - set(STABILITY_OPTIONS))
    if unknown:
        raise ValueError(f"unknown stability option(s) {unknown}; valid: {', '.join(STABILITY_OPTIONS)}")
    noise, n = stability.get("noise_scale", 1.0), stability.get("n_samples", 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise > 0:
        raise ValueError(f"ExplanationAgreement stability noise_scale must be a number > 0, got {noise!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"ExplanationAgreement stability n_samples must be an integer >= 1, got {n!r}")
    shared = {name: stability[name] for name in ("noise_scale", "n_samples") if name in stability}
    shared["seed"] = stability.get("seed", seed)
    if isinstance(shared["seed"], bool) or not isinstance(shared["seed"], int):
        raise ValueError(f"ExplanationAgreement stability seed must be an integer, got {shared['seed']!r}")
    agreement = stability.get("agreement", "rank_correlation")
    try:
        spec = metric_spec(agreement)
    except ValueError as err:
        raise ValueError(f"ExplanationAgreement stability agreement: {err}") from None
    if spec.compares != "maps":
        raise ValueError(
            f"ExplanationAgreement stability agreement {agreement!r} compares {spec.compares}, not two maps; "
            f"valid: {', '.join(metric_names('maps'))}"
        )
    return {"sensitivity_max": shared, "self_agreement": {**shared, "agreement": agreement}}


def attribution_config(method_args: dict[str, dict[str, Any]], method: str, role: str, seed: int) -> AttributionConfig:
    """The :class:`AttributionConfig` of ``method`` for the ``role`` model (its own layer, for a
    method that explains one)."""
    args = dict(method_args.get(method, {}))
    layer = args.pop(f"{role}_layer", None)
    args.pop("teacher_layer", None), args.pop("student_layer", None)
    if layer is not None:
        args["layer"] = layer
    return AttributionConfig(method=method, seed=seed, **args)


def input_modality(trainer: Trainer, input_shape: tuple[int, ...]) -> Modality:
    """The data module's modality; without one, the modality inputs of ``input_shape`` imply."""
    modality = data_capabilities(trainer.datamodule).modality
    return modality if modality is not None else Modality.for_inputs(torch.empty((1, *input_shape)))


def check_settings(
    trainer: Trainer,
    pl_module: LightningModule,
    input_shape: tuple[int, ...] | None,
    methods: list[str],
    method_args: dict[str, dict[str, Any]],
    k: int,
    stability: bool = False,
) -> None:
    """Refuse settings that cannot work with these models (and, when ``input_shape`` -- one
    sample's shape -- is known, these inputs); ``stability``: whether stability is measured."""
    for method in methods:
        _check_baseline(method, attribution_config(method_args, method, "teacher", 0), trainer)
    modality = None if input_shape is None else input_modality(trainer, input_shape)
    for method in methods:
        if modality is not None and not get_method(method).supports(modality):
            supported = ", ".join(sorted(get_method(method).modalities or ()))
            fitting = ", ".join(name for name, m in METHODS.items() if _explains(m, modality)) or "none"
            raise ValueError(
                f"ExplanationAgreement {method} explains {supported} inputs, these are {modality.name} "
                f"{modality.layout} inputs of shape {list(input_shape)}; remove {method} from methods "
                f"(methods for {modality.name} inputs: {fitting})"
            )
        if isinstance(modality, Text):
            try:  # e.g. a gradient method without a layer variant, or a noise tunnel on token ids
                check_token_method(get_method(method), attribution_config(method_args, method, "teacher", 0))
            except ValueError as err:
                raise ValueError(f"ExplanationAgreement methods: {err}") from None
        if get_method(method).explains_layer:
            for role in ROLES:
                _check_layer(method_args, method, role, getattr(pl_module, role), input_shape)
    if modality is None:
        return
    if stability and isinstance(modality, Text):
        raise ValueError(
            "ExplanationAgreement stability adds noise to the inputs, which token ids cannot take; "
            "set stability: null for text inputs"
        )
    num_features = modality.num_features(input_shape)
    if k > num_features:
        raise ValueError(
            f"ExplanationAgreement k={k} exceeds the {num_features} features of an input of shape "
            f"{list(input_shape)}: every top-k set would hold all features and top-k agreement would be 1.0 "
            f"for any maps; set k <= {num_features} (e.g. k: {max(1, num_features // 8)})"
        )
    for method in methods:
        if get_method(method).perturbation:
            patch_size = attribution_config(method_args, method, "teacher", 0).patch_size
            try:
                modality.feature_mask(torch.empty((1, *input_shape)), patch_size)
            except ValueError:
                raise ValueError(_patch_problem(method, input_shape, patch_size, modality)) from None


def _explains(method: type[Method], modality: Modality) -> bool:
    """Whether ``method`` explains inputs of ``modality`` (token ids: only the methods that can)."""
    return method.supports(modality) and (not isinstance(modality, Text) or explains_tokens(method))


def known_input_shape(trainer: Trainer, pl_module: LightningModule) -> tuple[int, ...] | None:
    """One sample's shape where it is known before the data are loaded: a kdlight datamodule's
    ``input_shape`` or the module's ``example_input_array``; ``None`` otherwise."""
    shape = data_capabilities(trainer.datamodule).input_shape
    if shape is not None:
        return shape
    example = getattr(pl_module, "example_input_array", None)
    return tuple(example.shape[1:]) if isinstance(example, Tensor) else None


def _check_baseline(method: str, config: AttributionConfig, trainer: Trainer) -> None:
    """A training-mean / sampled baseline needs a datamodule with ``train_inputs()``."""
    if config.baseline in ("mean", "sample") and not data_capabilities(trainer.datamodule).has_train_inputs:
        where = type(trainer.datamodule).__name__ if trainer.datamodule is not None else "no datamodule"
        raise ValueError(
            f"ExplanationAgreement {method}: baseline {config.baseline!r} needs the training inputs, but the data "
            f"({where}) has no train_inputs(); set method_args: {{{method}: {{baseline: zeros}}}} "
            f"or fit with a kdlight datamodule"
        )


def _layer_option(method_args: dict[str, dict[str, Any]], method: str, role: str) -> str:
    """Where the layer ``method`` explains in the ``role`` model is set (or would be)."""
    args = method_args.get(method, {})
    if f"{role}_layer" in args or "layer" not in args:
        return f"method_args: {{{method}: {{{role}_layer: <name>}}}}"
    return f"method_args: {{{method}: {{layer: <name>}}}} (or {role}_layer: <name> for the {role} alone)"


def _check_layer(
    method_args: dict[str, dict[str, Any]], method: str, role: str, model, input_shape: tuple[int, ...] | None
) -> None:
    """The model has the layer ``method`` explains, and (shape known) it runs and gives maps with
    the inputs' positions."""
    layer = attribution_config(method_args, method, role, 0).layer
    what = f"the {role} ({type(model).__name__})"
    option = _layer_option(method_args, method, role)
    name = grad_cam_layer_name(model, layer)
    if name is None:
        missing = f"has no layer {layer!r}" if layer is not None else "has no Conv1d/Conv2d layer to default to"
        raise ValueError(
            f"ExplanationAgreement {method}: {what} {missing}; {_layer_hint(model, layer)}; set it with {option}"
        )
    if input_shape is None:
        return
    if any(p.is_meta for p in model.parameters()):
        return  # not materialised yet (e.g. created in configure_model): checked at the first run
    try:
        shape = layer_output_shape(model, name, input_shape)
    except (RuntimeError, ValueError, TypeError):  # the model rejects such inputs: training will say so itself
        return
    if shape is None:
        raise ValueError(
            f"ExplanationAgreement {method}: layer {name!r} of {what} does not run in its forward; "
            f"{_layer_hint(model, None)}; set another with {option}"
        )
    if len(shape) != len(input_shape) + 1:  # a refusal, not a dispatch: [N, C', *positions] like the inputs
        raise ValueError(
            f"ExplanationAgreement {method}: layer {name!r} of {what} gives outputs of shape {list(shape[1:])}, "
            f"not maps like the inputs {list(input_shape)}; {_layer_hint(model, None)}; set a "
            f"convolutional one with {option}"
        )


def _patch_problem(method: str, input_shape: tuple[int, ...], patch_size: int | None, modality: Modality) -> str:
    """One line on why ``patch_size`` does not fit inputs of ``input_shape`` (channels first:
    [C, *positions], the only modalities whose features are patches)."""
    sizes = input_shape[1:]
    fitting = modality.patch_size_hint(input_shape)
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
