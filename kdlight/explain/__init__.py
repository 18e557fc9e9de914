"""Explanations of teacher and student: Captum methods, agreement metrics, the callback."""
from kdlight.explain.callback import ExplanationAgreement
from kdlight.explain.methods import AttributionConfig, attribute, attribute_pair, input_gradient_map, method_names
from kdlight.explain.metrics import AgreementCollection, AgreementMean, PerClassAgreement, agreement_metrics

__all__ = [
    "ExplanationAgreement",
    "AttributionConfig",
    "attribute",
    "attribute_pair",
    "input_gradient_map",
    "method_names",
    "AgreementCollection",
    "AgreementMean",
    "PerClassAgreement",
    "agreement_metrics",
]
