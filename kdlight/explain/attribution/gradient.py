"""Local gradient maps: saliency and input x gradient (Captum ``Saliency`` / ``InputXGradient``).

``saliency`` is the *signed* gradient ``d logit_target / d x`` (Captum ``abs=False``); metrics that
need magnitudes take ``abs`` themselves, and sign agreement stays measurable. On token ids both are
taken at the embedding output (Captum ``LayerGradientXActivation``; saliency without the activation
factor) and summed over the hidden dimension (:mod:`kdlight.explain.attribution.tokens`).
"""

from __future__ import annotations

from kdlight.explain.attribution.base import CaptumMethod
from kdlight.explain.attribution.registry import register
from kdlight.explain.attribution.training import input_x_gradient_map, saliency_map

__all__ = ["Saliency", "InputXGradient"]


@register
class Saliency(CaptumMethod):
    """The signed input gradient of the target logit."""

    name = "saliency"
    local = True  # on tokens: the gradient alone (no activation factor)
    layer_variant = "LayerGradientXActivation"
    noise_tunnel = True
    training_map = staticmethod(saliency_map)

    def explainer(self, model, inputs, config, baselines):
        from captum.attr import Saliency as CaptumSaliency

        return CaptumSaliency(model), {"abs": False}


@register
class InputXGradient(CaptumMethod):
    """Input times the input gradient of the target logit."""

    name = "input_x_gradient"
    layer_variant = "LayerGradientXActivation"
    noise_tunnel = True
    training_map = staticmethod(input_x_gradient_map)

    def explainer(self, model, inputs, config, baselines):
        from captum.attr import InputXGradient as CaptumInputXGradient

        return CaptumInputXGradient(model), {}
