"""The shape record of a structurally pruned network, and rebuilding that shape on a fresh one.

A checkpoint of a physically smaller network cannot be loaded into the dense architecture its
config builds. :func:`structure_record` lists, per submodule whose tensors shrank, the new tensor
shapes and size attributes (``out_channels``, ``num_features``, ...); :func:`apply_record` gives a
freshly built dense model exactly that structure, so a strict ``load_state_dict`` then succeeds.
Pure torch (no Lightning), so checkpoint loaders at any layer can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: the checkpoint key holding ``{network prefix: record}`` (prefix ``student`` or ``model``)
PRUNED_KEY = "kdlight_pruned"
#: module attributes that hold a tensor size and change when channels/neurons are removed
SIZE_ATTRIBUTES = ("in_channels", "out_channels", "in_features", "out_features", "num_features", "groups")

Record = dict[str, dict[str, dict[str, Any]]]


def structure_of(model: nn.Module) -> Record:
    """``{module path: {"shapes": {tensor: shape}, "attrs": {size attribute: value}}}`` of ``model``."""
    found: Record = {}
    for path, module in model.named_modules():
        tensors = {**module._parameters, **module._buffers}
        shapes = {name: list(t.shape) for name, t in tensors.items() if t is not None}
        attrs = {a: getattr(module, a) for a in SIZE_ATTRIBUTES if isinstance(getattr(module, a, None), int)}
        if shapes or attrs:
            found[path] = {"shapes": shapes, "attrs": attrs}
    return found


def structure_record(dense: Record, pruned: nn.Module) -> Record:
    """The entries of :func:`structure_of` ``(pruned)`` that differ from ``dense`` (taken before pruning)."""
    now = structure_of(pruned)
    return {path: entry for path, entry in now.items() if dense.get(path) != entry}


def kept_sizes(record: Record) -> dict[str, int]:
    """``{module path: kept output channels / features}`` of a record, for messages and reports."""
    sizes = {}
    for path, entry in record.items():
        attrs = entry["attrs"]
        value = attrs.get("out_channels", attrs.get("out_features", attrs.get("num_features")))
        if value is not None:
            sizes[path or "<root>"] = value
    return sizes


def apply_record(model: nn.Module, record: Mapping[str, Any], source: str = "checkpoint") -> nn.Module:
    """Give ``model`` the pruned structure of ``record`` in place (new, uninitialised tensors of the
    recorded shapes and the recorded size attributes); load the pruned weights afterwards."""
    names = dict(model.named_modules())
    unknown = [path for path in record if path not in names]
    if unknown:
        raise ValueError(
            f"{source} was pruned from another architecture: it records layer(s) {unknown[:5]} that "
            f"{type(model).__name__} has not; load it with the config the pruned model was trained with"
        )
    for path, entry in record.items():
        module = names[path]
        for name, shape in entry.get("shapes", {}).items():
            old = getattr(module, name, None)
            if not isinstance(old, torch.Tensor):
                raise ValueError(f"{source} records tensor {path}.{name} that {type(model).__name__} has not")
            new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module._buffers[name] = new
        for attr, value in entry.get("attrs", {}).items():
            setattr(module, attr, value)
    return model


def checkpoint_record(checkpoint: object, prefix: str) -> Record | None:
    """The record of the network stored under ``prefix`` (``student`` / ``model``) in a loaded
    checkpoint, or None when that network was not structurally pruned."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(PRUNED_KEY), Mapping):
        return None
    record = checkpoint[PRUNED_KEY].get(prefix.rstrip("."))
    return dict(record) if isinstance(record, Mapping) else None


def shape_mismatch_message(source: str, state: Mapping[str, torch.Tensor], model: nn.Module) -> str | None:
    """One line when ``state`` holds smaller tensors than ``model`` (a pruned network loaded into the
    dense architecture without its record); None when the shapes agree."""
    expected = model.state_dict()
    smaller = [
        k
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape and v.numel() < expected[k].numel()
    ]
    if not smaller:
        return None
    shown = ", ".join(f"{k} {list(state[k].shape)} (config: {list(expected[k].shape)})" for k in smaller[:3])
    return (
        f"{source} holds tensors of the wrong shape for the config's {type(model).__name__}, smaller than it "
        f"({shown}): another architecture, or a pruned network without the {PRUNED_KEY} record that rebuilds its "
        "shape; use the config it was trained with (config.yaml beside it)"
    )


def rebuild_for_checkpoint(
    model: nn.Module, checkpoint: object, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Before a strict load of ``state`` (the network extracted from ``checkpoint``) into ``model``:
    give ``model`` the pruned shapes the checkpoint records; when its tensors are smaller than the
    model's and no record says how, raise :func:`shape_mismatch_message` (one line)."""
    stored = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    prefix = next(
        (p for p in ("model", "student") if isinstance(stored, Mapping) and any(k.startswith(p + ".") for k in stored)),
        None,
    )
    record = checkpoint_record(checkpoint, prefix) if prefix else None
    if record is not None:
        apply_record(model, record, source=source)
        return
    message = shape_mismatch_message(source, state, model)
    if message is not None:
        raise ValueError(message)
