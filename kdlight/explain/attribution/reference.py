"""Methods that compare the input with a reference (baseline): integrated gradients, GradientSHAP
and DeepLift(SHAP), through Captum.

``deeplift_shap`` with a single baseline row (zeros, mean, or ``n_baselines=1``) is computed with
Captum ``DeepLift`` (DeepLiftShap averages DeepLift over the baselines, and Captum's DeepLiftShap
refuses a distribution of one). DeepLift needs each non-linearity to be its own ``nn.Module``,
called once per forward.
"""

from __future__ import annotations

from kdlight.explain.attribution.base import CaptumMethod
from kdlight.explain.attribution.registry import register
from kdlight.explain.attribution.training import integrated_gradients_map

__all__ = ["IntegratedGradients", "GradientShap", "DeepLiftShap"]


@register
class IntegratedGradients(CaptumMethod):
    """Integrated gradients from the baseline, ``n_steps`` points (``internal_batch_size`` per pass)."""

    name = "integrated_gradients"
    layer_variant = "LayerIntegratedGradients"
    takes_baseline = True
    noise_tunnel = True
    training_map = staticmethod(integrated_gradients_map)

    def explainer(self, model, inputs, config, baselines):
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        kwargs = {"baselines": baselines, "n_steps": config.n_steps}
        if config.internal_batch_size is not None:
            kwargs["internal_batch_size"] = max(config.internal_batch_size, inputs.shape[0])
        return CaptumIntegratedGradients(model), kwargs


@register
class GradientShap(CaptumMethod):
    """Expected gradients over a baseline distribution (``n_samples`` draws, ``stdevs`` noise)."""

    name = "gradient_shap"
    layer_variant = "LayerGradientShap"
    takes_baseline = True
    baseline_distribution = True
    random = True

    def explainer(self, model, inputs, config, baselines):
        from captum.attr import GradientShap as CaptumGradientShap

        return CaptumGradientShap(model), {
            "baselines": baselines,
            "n_samples": config.n_samples,
            "stdevs": float(config.stdevs),
        }


@register
class DeepLiftShap(CaptumMethod):
    """DeepLift averaged over the baselines (one baseline row: DeepLift)."""

    name = "deeplift_shap"
    takes_baseline = True
    baseline_distribution = True
    hooks = True
    noise_tunnel = True

    def explainer(self, model, inputs, config, baselines):
        from captum.attr import DeepLift
        from captum.attr import DeepLiftShap as CaptumDeepLiftShap

        if baselines.shape[0] > 1:
            return CaptumDeepLiftShap(model), {"baselines": baselines}
        return DeepLift(model), {"baselines": baselines}
