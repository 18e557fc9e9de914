"""Helpers for work that runs on a background thread beside training."""
from __future__ import annotations

import copy
import os
import sys
import threading

from torch import nn
from torch.nn.modules import module as nn_module

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def lowest_cpu_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux, where niceness is per thread), so a
    background job takes only CPU time that training leaves idle. Elsewhere, or where it is not
    permitted, nothing changes."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


def unhooked_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model``'s modules in eval mode that shares its parameters and buffers but none
    of its forward/backward hooks (e.g. the feature taps of a Hint objective, which would capture
    the background thread's activations) and none of its train/eval flags.

    ``None`` when global module hooks are registered (they fire on every module, copies too) or
    the model cannot be copied.
    """
    if any(getattr(nn_module, f"_global{name}", None) for name in _HOOK_DICTS):
        return None
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    try:
        clone = copy.deepcopy(model, memo=shared)
    except Exception:  # noqa: BLE001 -- such a model is simply not explained in the background
        return None
    for module in clone.modules():
        for name in _HOOK_DICTS:
            getattr(module, name).clear()
    return clone.eval()
