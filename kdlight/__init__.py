"""kdlight: knowledge distillation that also checks the student explains like the teacher."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["ClassifierModule", "DistillationModule", "LMModule", "LMDistillationModule", "DistillStep", "LossTerm"]

# Imported on first use, so ``import kdlight.functional`` stays light (no Lightning).
_LAZY = {
    "ClassifierModule": "kdlight.training.classifier",
    "DistillationModule": "kdlight.training.distillation",
    "LMModule": "kdlight.training.lm",
    "LMDistillationModule": "kdlight.training.lm",
    "DistillStep": "kdlight.core.step",
    "LossTerm": "kdlight.core.step",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlight' has no attribute {name!r}")
