"""Configurable distillation objectives (``class_path: kdlight.objectives.KD`` etc.)."""

from kdlight.objectives.base import Objective
from kdlight.objectives.composite import Composite
from kdlight.objectives.explanation import AttributionDistillation, ExplanationMatching
from kdlight.objectives.features import PKT, RKD, AttentionTransfer, Hint
from kdlight.objectives.lm import GeneralizedJSD, NextTokenCE, SkewKL, TokenKL, TokenTVD
from kdlight.objectives.logits import DKD, KD, CrossEntropy
from kdlight.objectives.multi_teacher import MultiTeacherKD
from kdlight.objectives.preservation import ExplanationPreservation
from kdlight.objectives.text import AttentionMatching, HiddenStateMatching

__all__ = [
    "Objective",
    "Composite",
    "CrossEntropy",
    "KD",
    "DKD",
    "Hint",
    "AttentionTransfer",
    "RKD",
    "PKT",
    "ExplanationMatching",
    "AttributionDistillation",
    "ExplanationPreservation",
    "MultiTeacherKD",
    "HiddenStateMatching",
    "AttentionMatching",
    "TokenKL",
    "GeneralizedJSD",
    "SkewKL",
    "TokenTVD",
    "NextTokenCE",
]
