"""The fake-quantised twin of an int8 model: what explanation methods differentiate instead of it.

Gradient attributions of a torchao int8 student are either impossible or not what a user wants:

- ``dynamic`` int8 quantises each Linear layer's input on the fly; the rounding has no gradient, so
  Captum's saliency / integrated gradients fail ("differentiated Tensor ... not used in the graph").
- ``weight_only`` int8 is differentiable, but only because torchao dequantises the weights inside its
  kernel; the twin below computes the same function with plain float ops.

The twin holds the int8 model's *own* weights, dequantised exactly (``int8 value x scale``, so no
second rounding onto a different grid), in torchao ``FakeQuantizedLinear`` layers that fake-quantise
each layer's input the way the int8 kernel quantises it (``dynamic``: asymmetric int8 per row) and
pass gradients straight through the rounding (the straight-through estimator, as in quantisation-aware
training). Each twin layer equals its int8 layer up to float32 rounding (the int8 kernel multiplies
integers, then scales and subtracts the activation zero-point term; the twin multiplies dequantised
values). ``weight_only``: measured at most 3.8e-6 on the logits of digits MLP students. ``dynamic``:
a rounding difference can move a later layer's input across an int8 rounding boundary (one
activation step), measured up to 2e-3 on the logits, top-1 unchanged. Its input gradients are the
int8 model's where it has them (``weight_only``) and the straight-through ones where it has none.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdlight.compression.quantization import _HOOK_DICTS, _torchao


def _int8_weight(module: nn.Module):
    """The torchao ``Int8Tensor`` weight of ``module``, or None."""
    weight = getattr(module, "weight", None)
    return weight if weight is not None and type(weight).__name__ == "Int8Tensor" else None


def _activation_config(weight, name: str):
    """torchao's fake-quantisation config for what the int8 kernel does to ``name``'s input (None:
    weight-only, the input stays float)."""
    kwargs = weight.act_quant_kwargs
    if weight.act_pre_scale is not None or weight.act_quant_scale is not None:
        raise ValueError(
            f"fake_quantized_twin: layer {name!r} uses static or pre-scaled activation quantisation, which has no "
            "fake-quantised twin here; quantise with quantize_int8 (dynamic or weight_only) instead"
        )
    if kwargs is None:
        return None
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    symmetric = kwargs.mapping_type == _torchao().MappingType.SYMMETRIC
    return IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=symmetric)


def int8_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s layers that hold torchao int8 weights."""
    return [name for name, module in model.named_modules() if _int8_weight(module) is not None]


def fake_quantized_twin(model: nn.Module) -> nn.Module:
    """A differentiable float copy of the int8 ``model`` (see the module docstring), in ``model``'s
    train/eval mode; ``model`` is untouched. Hooks on a replaced layer move to its twin layer.

    A model without int8 layers: one-line ValueError (quantise it with ``quantize_int8`` first).
    """
    names = int8_layers(model)
    if not names:
        raise ValueError(
            f"fake_quantized_twin: {type(model).__name__} has no torchao int8 layer; quantise it first with "
            "kdlight.compression.quantize_int8 (or convert a QuantizationAwareTraining student)"
        )
    from torchao.quantization.qat import FakeQuantizedLinear

    with torch.inference_mode(False), torch.no_grad():
        twin = copy.deepcopy(model)
        for name in names:
            old = twin.get_submodule(name)
            weight = _int8_weight(old)
            new = FakeQuantizedLinear(
                old.in_features,
                old.out_features,
                old.bias is not None,
                activation_config=_activation_config(weight, name),
                device=weight.device,
                dtype=weight.dequantize().dtype,
            )
            new.weight = nn.Parameter(weight.dequantize().clone())
            if old.bias is not None:
                new.bias = nn.Parameter(old.bias.detach().clone())
            for attr in _HOOK_DICTS:
                if attr in old.__dict__:
                    object.__setattr__(new, attr, old.__dict__[attr])
            new.train(old.training)
            if not name:  # the model is itself one int8 layer
                return new
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent), child, new)
    return twin


def differentiable(model: nn.Module) -> nn.Module:
    """``model`` itself, or its :func:`fake_quantized_twin` when it holds torchao int8 layers: what
    gradient attributions of the model are computed on (no gradient flows through int8 kernels)."""
    return fake_quantized_twin(model) if int8_layers(model) else model
