"""LIME (Ribeiro et al. 2016) through Captum ``Lime``: a sparse linear surrogate per example.

Each example gets ``n_samples`` random on/off patterns of its feature groups (the modality's
feature mask; absent groups take the baseline), weighted by an exponential kernel on their cosine
distance to the example (Captum's default kernel), and a ridge regression (``alpha=1``, as in the
``lime`` package; Captum's default Lasso zeroes every coefficient when the logit moves by less
than its ``alpha``, e.g. for an untrained student) is fitted to the target logit; a group's
coefficient is the attribution of every element in it.
"""

from __future__ import annotations

from torch import Tensor

from kdlight.explain.attribution.perturbation import PerturbationMethod, per_example
from kdlight.explain.attribution.registry import register

__all__ = ["Lime"]


@register
class Lime(PerturbationMethod):
    """LIME on feature groups (``patch_size``), ``n_samples`` perturbations per example."""

    name = "lime"
    random = True

    def attribute_groups(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime as CaptumLime

        mask = self.full_mask(inputs, modality, config.patch_size)
        explainer = CaptumLime(model, interpretable_model=SkLearnRidge(alpha=1.0))
        return per_example(explainer, inputs, target, config, baselines, mask)
