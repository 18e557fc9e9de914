"""Submodules by name: the one lookup behind feature taps and attribution layers (torch only)."""

from __future__ import annotations

import difflib

from torch import nn

__all__ = ["module_names", "resolve_module"]


def module_names(model: nn.Module) -> list[str]:
    """Paths of every named submodule, as accepted by ``model.get_submodule``."""
    return [name for name, _ in model.named_modules() if name]


def resolve_module(model: nn.Module, name: str, role: str = "model", purpose: str = "") -> nn.Module:
    """``model.get_submodule(name)``, or a one-line ValueError listing the valid (and close) names.

    ``role`` names the model in the message (``student``, ``teacher``); ``purpose`` says what the
    layer is for (e.g. ``"grad_cam"``).
    """
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = module_names(model)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        where = f" for {purpose}" if purpose else ""
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"{role} has no submodule {name!r}{where}; valid names are: {', '.join(names) or 'none'}{hint}"
        ) from None
