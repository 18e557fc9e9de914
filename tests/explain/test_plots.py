"""Explanation figures: layout per input kind, array rendering, saving, validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from kdlight.explain.plots import (
    agreement_over_epochs_figure,
    explanation_figure,
    figure_to_array,
    input_kind,
    save_figure,
)

SHAPES = {"tabular": (3, 14), "signal": (2, 2, 30), "image": (2, 3, 8, 8)}


def _maps(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))


def test_input_kind():
    for kind, shape in SHAPES.items():
        assert input_kind(torch.zeros(shape)) == kind
    with pytest.raises(ValueError, match="shape"):
        input_kind(torch.zeros(5))
    with pytest.raises(ValueError):
        input_kind(np.zeros((1, 1, 1, 1, 1)))


@pytest.mark.parametrize("kind", list(SHAPES))
def test_explanation_figure_grid(kind):
    x, t, s = _maps(SHAPES[kind])
    n = x.shape[0]
    labels = [f"y={i} t={i} s={i}" for i in range(n)]
    names = [f"feat{j}" for j in range(x.shape[1])] if kind == "tabular" else None
    fig = explanation_figure(x, t, s, labels=labels, feature_names=names, title=kind)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n * 3
    rows = {ax.get_subplotspec().rowspan.start for ax in fig.axes}
    cols = {ax.get_subplotspec().colspan.start for ax in fig.axes}
    assert rows == set(range(n)) and cols == {0, 1, 2}
    assert fig.axes[0].get_ylabel() == labels[0]
    if kind == "tabular":
        assert len(fig.axes[1].patches) == 10
        shown = [tick.get_text() for tick in fig.axes[0].get_yticklabels()]
        assert all(name.startswith("feat") for name in shown)


def test_image_maps_share_a_symmetric_scale_per_row():
    x, t, s = _maps((1, 1, 5, 5))
    s = 3 * s
    fig = explanation_figure(x, t, s)
    (teacher,), (student,) = fig.axes[1].images, fig.axes[2].images
    assert teacher.get_clim() == student.get_clim()
    lo, hi = teacher.get_clim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(float(s.abs().max()))


def test_figure_to_array_and_save(tmp_path):
    fig = explanation_figure(*_maps(SHAPES["image"]))
    array = figure_to_array(fig)
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8
    width, height = fig.get_size_inches() * fig.dpi
    assert array.shape[:2] == (round(height), round(width))
    path = save_figure(fig, tmp_path / "sub" / "explain.png")
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_shapes_raise():
    x, t, s = _maps((2, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        explanation_figure(x, t[:, :, :2], s)
    with pytest.raises(ValueError, match="shape"):
        explanation_figure(torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="labels"):
        explanation_figure(x, t, s, labels=["a"])
    with pytest.raises(ValueError, match="feature_names"):
        explanation_figure(*_maps((2, 5)), feature_names=["a", "b"])
    assert len(explanation_figure(x, t, s, feature_names=["a", "b"]).axes) == 6  # ignored for images


def test_zero_maps_do_not_break():
    x = torch.randn(1, 1, 4, 4)
    fig = explanation_figure(x, torch.zeros_like(x), torch.zeros_like(x))
    assert figure_to_array(fig).shape[2] == 3


def test_agreement_over_epochs_figure():
    frame = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 2, 2],
            "cosine": [0.1, 0.3, 0.4, 0.5, 0.6, 0.7],
            "rank_correlation": [0.0, 0.1, 0.2, 0.3, 0.3, 0.5],
            "stage": ["val"] * 6,
        }
    )
    fig = agreement_over_epochs_figure(frame, title="agreement")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["cosine", "rank_correlation"]
    assert np.allclose(ax.lines[0].get_ydata(), [0.2, 0.45, 0.65])
    with pytest.raises(ValueError, match="epoch"):
        agreement_over_epochs_figure(frame.drop(columns="epoch"))
    with pytest.raises(ValueError):
        agreement_over_epochs_figure(frame, metrics=["missing"])
