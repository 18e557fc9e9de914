"""A freshly initialised copy of a model: the chance level for agreement measures."""

from __future__ import annotations

import copy

import torch
from torch import nn


def reinitialized(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose parameters are re-drawn with ``reset_parameters`` (seeded,
    global RNG untouched, safe inside inference mode), in eval mode."""
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = copy.deepcopy(model)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return fresh.eval()
