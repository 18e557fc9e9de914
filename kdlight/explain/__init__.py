"""Explanations of teacher and student: Captum methods, agreement metrics, the callback.

Names are imported on first use, so ``import kdlight.explain.methods`` or
``kdlight.explain.metrics`` (torch only) does not import the callback, Lightning, pandas or PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExplanationAgreement",
    "AttributionConfig",
    "attribute",
    "input_gradient_map",
    "method_names",
    "AgreementCollection",
    "AgreementMean",
    "PerClassAgreement",
]

_LAZY = {
    "ExplanationAgreement": "kdlight.explain.callback",
    "AttributionConfig": "kdlight.explain.methods",
    "attribute": "kdlight.explain.methods",
    "input_gradient_map": "kdlight.explain.methods",
    "method_names": "kdlight.explain.methods",
    "AgreementCollection": "kdlight.explain.metrics",
    "AgreementMean": "kdlight.explain.metrics",
    "PerClassAgreement": "kdlight.explain.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlight.explain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
