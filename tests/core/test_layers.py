"""The one submodule lookup (feature taps and attribution layers)."""

from __future__ import annotations

import pytest
from torch import nn

from kdlight.core.layers import module_names, resolve_module


def _model() -> nn.Module:
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(2, 3))


def test_names_and_lookup():
    model = _model()
    assert module_names(model) == ["0", "0.0", "0.1", "1", "2"]
    assert resolve_module(model, "0.0") is model[0][0]


def test_unknown_name_is_one_line_with_valid_and_close_names():
    with pytest.raises(ValueError) as info:
        resolve_module(_model(), "0.2", role="student", purpose="grad_cam")
    message = str(info.value)
    assert message == (
        "student has no submodule '0.2' for grad_cam; valid names are: 0, 0.0, 0.1, 1, 2; did you mean 0.1, 0.0?"
    )  # closest first
    with pytest.raises(ValueError, match=r"^teacher has no submodule 'head'; valid names are: 0, 0.0, 0.1, 1, 2$"):
        resolve_module(_model(), "head", role="teacher")
