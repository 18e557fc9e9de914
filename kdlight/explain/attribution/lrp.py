"""Layer-wise relevance propagation (Bach et al. 2015) through Captum ``LRP``, epsilon rule.

The target logit is redistributed layer by layer back to the input; with the epsilon rule and no
biases the relevances of an input sum to the logit (conservation). Supported models are built of
these leaf modules (checked before the call; any other leaf is refused in one line):

* propagated with the epsilon rule: ``Linear``, ``Conv1d``, ``Conv2d``, ``BatchNorm1d``,
  ``BatchNorm2d``, ``MaxPool1d``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool1d``,
  ``AdaptiveAvgPool2d``;
* passed through unchanged: ``ReLU``, ``Tanh``, ``Dropout``, ``Flatten``, ``Identity``.

Each leaf must run once per forward. Operations outside modules (``x.flatten(1)``, ``F.relu``,
residual ``+``) are differentiated as they are, so residual networks run but do not conserve
relevance. Captum attaches rules and hooks to the modules for the call; they are removed afterwards.
"""

from __future__ import annotations

from functools import cache

from torch import Tensor, nn

from kdlight.explain.attribution.base import Method
from kdlight.explain.attribution.registry import register

__all__ = ["LRP", "EPSILON_LAYERS", "PASS_THROUGH_LAYERS", "check_lrp_model"]

#: leaf modules whose relevance follows the epsilon rule
EPSILON_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)
#: leaf modules that pass relevance through unchanged
PASS_THROUGH_LAYERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Tanh, nn.Dropout, nn.Flatten, nn.Identity)
_CAPTUM_NON_LINEAR = (nn.ReLU, nn.Tanh, nn.Dropout)  # Captum's own pass-through types


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name and not list(m.children())]


def check_lrp_model(model: nn.Module) -> None:
    """Refuse, in one line, a model with a leaf module LRP has no rule for."""
    leaves = _leaves(model)
    if not leaves:
        raise ValueError(
            f"lrp needs a model built of submodules, got a bare {type(model).__name__}; wrap it in nn.Sequential"
        )
    supported = EPSILON_LAYERS + PASS_THROUGH_LAYERS
    bad = [f"{name} ({type(m).__name__})" for name, m in leaves if type(m) not in supported]
    if bad:
        names = ", ".join(sorted(t.__name__ for t in supported))
        raise ValueError(
            f"lrp has no rule for {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; it supports: {names}"
        )


@cache
def _rules() -> tuple[type, type]:
    """Captum's epsilon rule and a pass-through rule (built on first use: Captum imports matplotlib)."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    class PassThroughRule(EpsilonRule):
        """Relevance passes the module unchanged: no relevance hooks on its tensors."""

        def forward_hook(self, module, inputs, outputs):
            return outputs.clone()

    return EpsilonRule, PassThroughRule


@register
class LRP(Method):
    """Epsilon-rule LRP of the target logit (see the module notes for the supported layers)."""

    name = "lrp"
    hooks = True

    def attribute(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        from captum.attr import LRP as CaptumLRP

        if not inputs.is_floating_point():
            raise ValueError(
                f"lrp propagates relevance by gradients, which needs floating inputs; these are {inputs.dtype}"
            )
        check_lrp_model(model)
        epsilon, pass_through = _rules()
        leaves = [m for _, m in _leaves(model)]
        try:
            for module in leaves:  # the types Captum has no default rule for
                if type(module) in PASS_THROUGH_LAYERS and type(module) not in _CAPTUM_NON_LINEAR:
                    module.rule = pass_through()
                elif type(module) in EPSILON_LAYERS and not hasattr(module, "rule"):
                    module.rule = epsilon()
            return CaptumLRP(model).attribute(inputs.clone().requires_grad_(True), target=target)
        finally:
            for module in leaves:  # Captum keeps the saved activations (``activations``) otherwise
                for attr in ("rule", "activations"):
                    if attr in module.__dict__:
                        delattr(module, attr)
