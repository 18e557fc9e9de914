"""Deprecated location: the attribution API lives in :mod:`kdlight.explain.attribution`.

Kept as a thin re-export while callers move; :func:`feature_mask_for` is now
``modality.feature_mask(inputs, patch_size)`` of a :class:`kdlight.core.modality.Modality`.
"""

from __future__ import annotations

from torch import Tensor

from kdlight.core.modality import MAX_FEATURES_WITHOUT_PATCHES, Modality
from kdlight.explain.attribution import (
    BASELINE_KINDS,
    METHODS,
    NOISE_TUNNEL_TYPES,
    TRAINING_MAP_KINDS,
    AttributionConfig,
    attribute,
    baseline_kind,
    conv_layer_names,
    grad_cam_layer_name,
    input_gradient_map,
    is_pure,
    layer_output_shape,
    make_baselines,
    method_names,
)

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
    "input_gradient_map",
]


def feature_mask_for(inputs: Tensor, patch_size: int | None = None) -> Tensor:
    """``Modality.for_inputs(inputs).feature_mask(inputs, patch_size)`` (deprecated)."""
    return Modality.for_inputs(inputs).feature_mask(inputs, patch_size)
