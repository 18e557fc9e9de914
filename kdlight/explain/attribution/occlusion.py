"""Occlusion (Zeiler & Fergus 2014) through Captum ``Occlusion``.

Windows come from the modality (:meth:`kdlight.core.modality.Modality.occlusion_window`): square
``patch_size`` patches spanning all channels of an image, ``patch_size`` segments of a signal,
single columns of a table, with the stride equal to the window, so every element is occluded once
(windows at the far edges are smaller). Each element's attribution is the drop of the target
logit when its window takes the baseline: ``f(x) - f(x with the window at the baseline)``.
Deterministic and hook-free.
"""

from __future__ import annotations

from torch import Tensor

from kdlight.explain.attribution.perturbation import PerturbationMethod
from kdlight.explain.attribution.registry import register

__all__ = ["Occlusion"]


@register
class Occlusion(PerturbationMethod):
    """Non-overlapping sliding windows of ``patch_size`` replaced by the baseline."""

    name = "occlusion"

    def attribute_groups(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        window, strides = modality.occlusion_window(tuple(inputs.shape[1:]), config.patch_size)
        windows = int(modality.feature_mask(inputs, config.patch_size).max()) + 1
        return CaptumOcclusion(model).attribute(
            inputs,
            sliding_window_shapes=window,
            strides=strides,
            baselines=baselines,
            target=target,
            perturbations_per_eval=self.perturbations_per_eval(config, inputs.shape[0], windows),
        )
