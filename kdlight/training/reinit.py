"""A freshly initialised copy of a model: the chance level for agreement measures."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _is_float_parameter(param: torch.Tensor) -> bool:
    return type(param) in (nn.Parameter, torch.Tensor)


def _dequantize_parameters(model: nn.Module) -> None:
    """Replace every quantised parameter (a tensor subclass with ``dequantize``, e.g. torchao's
    ``Int8Tensor``) by a float ``nn.Parameter`` of its values, in place: ``reset_parameters`` then
    draws float weights (quantised tensors implement no ``uniform_``)."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not _is_float_parameter(param) and callable(getattr(param, "dequantize", None)):
                setattr(module, name, nn.Parameter(param.dequantize().detach().clone(), param.requires_grad))


def reinitialized(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose parameters are re-drawn with ``reset_parameters`` (seeded,
    global RNG untouched, safe inside inference mode), in eval mode.

    A quantised model (torchao int8 weights) gives a float model of the same architecture: its
    parameters are dequantised before they are re-drawn. A parameter that can be neither re-drawn
    nor dequantised: one-line TypeError.
    """
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = copy.deepcopy(model)
        _dequantize_parameters(fresh)
        for name, module in fresh.named_modules():
            if not hasattr(module, "reset_parameters"):
                continue
            try:
                module.reset_parameters()
            except (NotImplementedError, RuntimeError, TypeError) as err:
                kinds = sorted({type(p).__name__ for p in module.parameters(recurse=False)})
                raise TypeError(
                    f"reinitialized: cannot re-draw the parameters of {type(module).__name__} {name or '(model)'!r} "
                    f"(parameter types {kinds}: {str(err).splitlines()[0][:120]}); give it float parameters or a "
                    "reset_parameters that works for them"
                ) from err
        for module in fresh.modules():  # transformers models: layers without reset_parameters (GPT-2's Conv1D, RMSNorm)
            if _is_hf_model(module):
                module.apply(module._init_weights)
    return fresh.eval()


def _is_hf_model(module: nn.Module) -> bool:
    """A ``transformers.PreTrainedModel`` (checked by name: transformers is not imported here)."""
    return callable(getattr(module, "_init_weights", None)) and any(
        cls.__name__ == "PreTrainedModel" for cls in type(module).__mro__
    )
