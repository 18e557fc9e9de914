"""Contracts shared by every layer, with no Lightning in sight: the batch contract (batch.py), the
data-module protocol (datamodule.py), input modalities (modality/), layer lookup (layers.py), the
distillation step record (step.py), schedules, errors, random state and weight loading (weights.py)."""
