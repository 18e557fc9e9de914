"""Explanations of teacher and student: Captum methods, agreement metrics, the callback.

Names are imported on first use, so ``import kdlight.explain.attribution`` or
``kdlight.explain.metrics`` (torch only) does not import the callback, Lightning, pandas or PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

_ATTRIBUTION = "kdlight.explain.attribution"
_METRICS = "kdlight.explain.metrics"

_LAZY = {
    "ExplanationAgreement": "kdlight.explain.callback",
    "ContextAttribution": "kdlight.explain.callback.lm_context",
    "context_attributions": "kdlight.explain.attribution.context_tokens",
    "AttributionConfig": _ATTRIBUTION,
    "attribute": _ATTRIBUTION,
    "input_gradient_map": _ATTRIBUTION,
    "method_names": _ATTRIBUTION,
    "METHODS": _ATTRIBUTION,
    "Method": _ATTRIBUTION,
    "get_method": _ATTRIBUTION,
    "MetricSpec": _METRICS,
    "metric_names": _METRICS,
    "metric_spec": _METRICS,
    "register_metric": _METRICS,
    "AgreementCollection": _METRICS,
    "AgreementMean": _METRICS,
    "PerClassAgreement": _METRICS,
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlight.explain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
