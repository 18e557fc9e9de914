"""Model outputs as logits: every caller (training step, teacher cache, Captum, callback) sees a tensor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["logits_of", "return_logits"]


def logits_of(output: Any) -> Tensor:
    """The logits in a model's ``output``.

    A tensor as is; a ``transformers`` ``ModelOutput`` or a dict: its ``"logits"``; a tuple or
    list: its first tensor. Anything else is a one-line TypeError naming the type.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        logits = output.get("logits")
        if isinstance(logits, Tensor):
            return logits
        raise TypeError(
            f"the model returned a {type(output).__name__} without a 'logits' tensor (keys: "
            f"{', '.join(map(str, output.keys())) or 'none'}); return the logits or a dict holding 'logits'"
        )
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise TypeError(
        f"cannot read logits from a model output of type {type(output).__name__}; return a tensor, a dict or "
        f"ModelOutput with 'logits', or a tuple whose first tensor is the logits"
    )


def _logits_hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor | None:
    return None if isinstance(output, Tensor) else logits_of(output)


def return_logits(model: nn.Module) -> nn.Module:
    """Make ``model(x)`` return :func:`logits_of` its output, with a forward hook; returns ``model``.

    Idempotent: calling it again on the same model adds no second hook. A model that already
    returns a tensor is unchanged.
    """
    if not any(hook is _logits_hook for hook in model._forward_hooks.values()):
        model.register_forward_hook(_logits_hook)
    return model
