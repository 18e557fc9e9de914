"""The Lightning layer: the modules that train (ClassifierModule, DistillationModule), the
teacher-output cache, feature taps and in-step batch transforms."""
from kdlight.training.classifier import ClassifierModule
from kdlight.training.distillation import DistillationModule

__all__ = ["ClassifierModule", "DistillationModule"]
