"""Contracts shared by every layer, with no Lightning in sight: the distillation step record,
schedules, errors, random state and weight loading."""
