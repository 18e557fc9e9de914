"""Perturbation methods on feature groups: KernelSHAP and Shapley value sampling (Captum).

Feature groups come from the modality (:meth:`kdlight.core.modality.Modality.feature_mask`:
tabular columns, 1-D segments or square image patches shared across channels; ``patch_size``
sets their size). KernelShap fits one surrogate per example (looped here, so teacher and student
see the same random stream order). Token ids (text) are explained one sequence at a time on its
real tokens, which are replaced by the reference token (:func:`kdlight.explain.attribution.tokens.per_sequence`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlight.core.modality import Modality
from kdlight.explain.attribution.base import Method
from kdlight.explain.attribution.registry import register
from kdlight.explain.attribution.tokens import is_token_input, per_sequence

__all__ = ["PerturbationMethod", "KernelShap", "ShapleyValueSampling"]


class PerturbationMethod(Method):
    """A method that replaces feature groups by the baseline and watches the target logit.
    Subclasses implement :meth:`attribute_groups`."""

    takes_baseline = True
    perturbation = True

    def attribute(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        if is_token_input(inputs, modality):
            return per_sequence(
                self.attribute_groups, model, inputs, target, config, baselines=baselines, modality=modality
            )
        return self.attribute_groups(model, inputs, target, config, baselines=baselines, modality=modality)

    def attribute_groups(self, model, inputs: Tensor, target: Tensor, config, *, baselines, modality) -> Tensor:
        """Attributions of ``model`` (a module or a forward function) with the modality's feature
        groups replaced by ``baselines``; arguments as in :meth:`Method.attribute`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement attribute_groups()")

    @staticmethod
    def full_mask(inputs: Tensor, modality: Modality, patch_size: int | None) -> Tensor:
        """The modality's feature mask materialised to one input's shape ``[1, ...]`` (Captum's
        ShapleyValueSampling flattens it with ``.view(-1)``, which fails on an expanded mask)."""
        mask = modality.feature_mask(inputs, patch_size)
        return mask.expand(1, *inputs.shape[1:]).contiguous()

    @staticmethod
    def perturbations_per_eval(config, batch: int, cap: int) -> int:
        """Perturbed copies per forward: ``internal_batch_size`` rows (``64 * batch`` if None),
        at most ``cap``."""
        budget = config.internal_batch_size if config.internal_batch_size is not None else 64 * batch
        return max(1, min(cap, budget // max(batch, 1)))


def per_example(explainer, inputs: Tensor, target: Tensor, config, baselines: Tensor, mask: Tensor) -> Tensor:
    """Run a surrogate-fitting Captum explainer (KernelShap, Lime) one example at a time."""
    per_eval = PerturbationMethod.perturbations_per_eval(config, 1, config.n_samples)
    out = [
        explainer.attribute(
            inputs[i : i + 1],
            baselines=baselines,
            target=target[i : i + 1],
            feature_mask=mask,
            n_samples=config.n_samples,
            perturbations_per_eval=per_eval,
        )
        for i in range(inputs.shape[0])
    ]
    return torch.cat(out, dim=0)


@register
class KernelShap(PerturbationMethod):
    """KernelSHAP with ``n_samples`` coalitions per example. A single feature group (e.g. a one-token
    sentence; Captum's kernel weights are undefined there) gets its exact Shapley value,
    ``f(x) - f(baseline)``."""

    name = "kernel_shap"
    random = True

    def attribute_groups(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        from captum.attr import KernelShap as CaptumKernelShap

        mask = self.full_mask(inputs, modality, config.patch_size)
        if int(mask.max()) == 0:
            with torch.no_grad():
                rows = torch.arange(inputs.shape[0], device=inputs.device)
                gap = model(inputs)[rows, target] - model(baselines.expand_as(inputs))[rows, target]
            return gap.view(-1, *(1,) * (inputs.dim() - 1)).expand_as(inputs).float()
        return per_example(CaptumKernelShap(model), inputs, target, config, baselines, mask)


@register
class ShapleyValueSampling(PerturbationMethod):
    """Shapley values from ``n_samples`` random feature permutations."""

    name = "shapley_value_sampling"
    random = True

    def attribute_groups(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        from captum.attr import ShapleyValueSampling as CaptumShapleyValueSampling

        mask = self.full_mask(inputs, modality, config.patch_size)
        num_features = int(mask.max()) + 1
        return CaptumShapleyValueSampling(model).attribute(
            inputs,
            baselines=baselines,
            target=target,
            feature_mask=mask,
            n_samples=config.n_samples,
            perturbations_per_eval=self.perturbations_per_eval(config, inputs.shape[0], num_features),
        )
