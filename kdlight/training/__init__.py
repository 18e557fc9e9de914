"""The Lightning layer: the modules that train (ClassifierModule, DistillationModule, LMModule, LMDistillationModule), the
teacher-output cache, feature taps and in-step batch transforms."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ClassifierModule", "DistillationModule", "LMModule", "LMDistillationModule"]

# Imported on first use: kdlight.objectives imports training.taps, and distillation imports objectives.
_LAZY = {
    "ClassifierModule": "kdlight.training.classifier",
    "DistillationModule": "kdlight.training.distillation",
    "LMModule": "kdlight.training.lm",
    "LMDistillationModule": "kdlight.training.lm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlight.training' has no attribute {name!r}")
