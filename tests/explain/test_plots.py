"""Explanation figures: layout per modality, array rendering, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from kdlight.core.modality import Image, Signal, Tabular
from kdlight.core.modality.image import mosaic as _mosaic
from kdlight.explain.plots import (
    agreement_over_epochs_figure,
    explanation_figure,
    explanation_image,
    figure_to_array,
)

SHAPES = {"tabular": (3, 14), "signal": (2, 2, 30), "image": (2, 3, 8, 8)}


def _maps(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))


MODALITIES = {"tabular": Tabular(), "signal": Signal(), "image": Image()}


@pytest.mark.parametrize("kind", list(SHAPES))
def test_the_modality_draws_and_is_guessed_from_the_rank_without_one(kind):
    x, t, s = _maps(SHAPES[kind])
    guessed = explanation_image(x, t, s, title=kind)
    assert np.array_equal(guessed, explanation_image(x, t, s, title=kind, modality=MODALITIES[kind]))
    wrong = Image() if kind != "image" else Tabular()
    with pytest.raises(ValueError, match=f"{wrong.name} inputs must be"):
        explanation_image(x, t, s, modality=wrong)


def test_tabular_names_come_from_the_modality_and_token_ids_are_never_drawn_as_bars():
    x, t, s = _maps((2, 12))
    fig = explanation_figure(x, t, s, modality=Tabular(feature_names=[f"gene{j}" for j in range(12)]))
    assert all(tick.get_text().startswith("gene") for tick in fig.axes[0].get_yticklabels())
    with pytest.raises(ValueError, match="no default modality"):
        explanation_figure(torch.ones(2, 12, dtype=torch.long), t, s)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_explanation_figure_grid(kind):
    x, t, s = _maps(SHAPES[kind])
    n = x.shape[0]
    labels = [f"y={i} t={i} s={i}" for i in range(n)]
    names = [f"feat{j}" for j in range(x.shape[1])] if kind == "tabular" else None
    fig = explanation_figure(x, t, s, labels=labels, feature_names=names, title=kind)
    assert isinstance(fig, Figure)
    if kind == "image":  # one raster (Pillow), no axes: the figure shows exactly explanation_image's pixels
        (ax,) = fig.axes
        assert len(ax.images) == 1 and not ax.axison
        image = explanation_image(x, t, s, labels=labels, title=kind)
        assert np.array_equal(figure_to_array(fig), image)
        unlabelled = explanation_image(x, t, s, title=kind)
        assert image.shape[1] == unlabelled.shape[1] == 500 and not np.array_equal(image, unlabelled)
        return
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
    import matplotlib

    x, t, s = _maps((2, 1, 5, 5))
    s[0] = 3 * s[0]  # row 0: the student's map sets the scale; row 1 its own scale
    mosaic, gap = _mosaic(x.numpy(), t.numpy(), s.numpy())
    assert gap == 1 and mosaic.shape == (2 * 5 + 1, 3 * 5 + 2, 3)
    cmap = matplotlib.colormaps["RdBu_r"]
    for row in range(2):
        m = float(torch.cat([t[row], s[row]]).abs().max())
        top = row * 6  # 5 pixel rows + 1 gap row per sample
        for col, maps in ((1, t), (2, s)):
            shown = mosaic[top : top + 5, col * 6 : col * 6 + 5]
            expected = cmap((maps[row, 0].numpy() / m + 1) / 2)[..., :3]
            assert np.allclose(shown, expected, atol=1e-6)
    assert np.allclose(mosaic[5], 1.0)  # white gap between samples


def test_figure_to_array():
    fig = explanation_figure(*_maps(SHAPES["image"]))
    array = figure_to_array(fig)
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8
    width, height = fig.get_size_inches() * fig.dpi
    assert array.shape[:2] == (round(height), round(width))


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
    assert len(explanation_figure(x, t, s, feature_names=["a", "b"]).axes) == 1  # ignored for images


@pytest.mark.parametrize("size", [8, 32, 224])
def test_image_mosaic_fits_the_width_whatever_the_image_size(size):
    x, t, s = _maps((2, 3, size, size))
    image = explanation_image(x, t, s, labels=["a", "b"], title="t")
    assert image.dtype == np.uint8 and image.shape[1] == 500
    mosaic, _ = _mosaic(x.numpy(), t.numpy(), s.numpy())
    drawn = (image < 250).any(axis=2)  # non-white pixels: the mosaic (plus text) is wider than half the canvas
    columns = np.flatnonzero(drawn.any(axis=0))
    assert columns.max() < 500 and columns.max() - columns.min() > 250


def test_signal_image_is_the_rendered_figure():
    x, t, s = _maps(SHAPES["signal"])
    assert np.array_equal(explanation_image(x, t, s), figure_to_array(explanation_figure(x, t, s)))


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
