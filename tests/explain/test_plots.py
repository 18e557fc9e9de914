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
    names = [f"gene{j}" for j in range(12)]
    drawn = explanation_image(x, t, s, modality=Tabular(feature_names=names))
    assert not np.array_equal(drawn, explanation_image(x, t, s, modality=Tabular()))  # x0.. are other names
    shown = set(np.argsort(-np.abs(t[0].numpy()))[:1]) | set(np.argsort(-np.abs(s[0].numpy()))[:1])
    renamed = [f"{name}_renamed" if j in shown else name for j, name in enumerate(names)]
    assert not np.array_equal(drawn, explanation_image(x, t, s, modality=Tabular(feature_names=renamed)))
    with pytest.raises(ValueError, match="no default modality"):
        explanation_figure(torch.ones(2, 12, dtype=torch.long), t, s)


def test_a_feature_left_out_of_the_top_ten_is_not_drawn():
    x, t, s = _maps((1, 12))
    t[0, 11], s[0, 11] = 0.0, 0.0  # the weakest feature in both maps: not among the 10 shown
    t[0, 10], s[0, 10] = 1e-6, 0.0
    names = [f"f{j}" for j in range(12)]
    drawn = explanation_image(x, t, s, modality=Tabular(feature_names=names))
    other = explanation_image(x, t, s, modality=Tabular(feature_names=[*names[:10], "zz10", "zz11"]))
    assert np.array_equal(drawn, other)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_explanation_figure_is_one_raster_of_the_image(kind):
    """Every built-in modality is drawn with Pillow: the figure is one axes showing exactly
    explanation_image's pixels; labels and titles change the picture, not its width."""
    x, t, s = _maps(SHAPES[kind])
    n = x.shape[0]
    labels = [f"y={i} t={i} s={i}" for i in range(n)]
    names = [f"feat{j}" for j in range(x.shape[1])] if kind == "tabular" else None
    fig = explanation_figure(x, t, s, labels=labels, feature_names=names, title=kind)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.images) == 1 and not ax.axison
    image = explanation_image(x, t, s, labels=labels, feature_names=names, title=kind)
    assert np.array_equal(figure_to_array(fig), image)
    unlabelled = explanation_image(x, t, s, feature_names=names, title=kind)
    width = 500 if kind == "image" else 900
    assert image.shape[1] == unlabelled.shape[1] == width and not np.array_equal(image, unlabelled)


@pytest.mark.parametrize("kind", ["signal", "tabular"])
def test_rows_have_one_height_and_the_title_adds_a_band(kind):
    shape = SHAPES[kind]
    heights = [explanation_image(*_maps((n, *shape[1:]))).shape[0] for n in (1, 2, 3)]
    assert heights[2] - heights[1] == heights[1] - heights[0] > 0
    titled = explanation_image(*_maps((1, *shape[1:])), title="a title").shape[0]
    assert titled > heights[0]


def _chromatic(image: np.ndarray) -> np.ndarray:
    """Pixels with colour (not white, gray or black)."""
    rgb = image.astype(int)
    return rgb.max(axis=2) - rgb.min(axis=2) > 40


def test_signal_band_colours_each_step_by_sign_and_size_and_leaves_zero_white():
    length = 40
    x = torch.sin(torch.linspace(0, 6, length)).view(1, 1, length)
    t = torch.zeros_like(x)
    t[0, 0, 5], t[0, 0, 20] = 1.0, -0.5  # the row's limit is 1: a full red step and a half blue one
    s = torch.zeros_like(x)  # the student's cell: no colour at all
    image = explanation_image(x, t, s, modality=Signal())
    columns = np.flatnonzero(_chromatic(image).any(axis=0))
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    assert len(runs) == 2  # only the two non-zero steps, only in the teacher's cell
    red, blue = (image[:, run].reshape(-1, 3).astype(int) for run in runs)
    red, blue = red[_chromatic(red[None])[0]], blue[_chromatic(blue[None])[0]]
    assert (red[:, 0] > red[:, 2]).all() and (blue[:, 2] > blue[:, 0]).all()
    assert np.ptp(red, axis=1).mean() > np.ptp(blue, axis=1).mean()  # |1| is more saturated than |0.5|
    width = 900
    assert width / 3 < runs[0].min() and runs[1].max() < 2 * width / 3  # the teacher's column
    stripe = (runs[1].mean() - runs[0].mean()) / 15  # steps 5 and 20: 15 stripes apart
    assert abs(len(runs[0]) - stripe) <= 1 and abs(len(runs[1]) - stripe) <= 1


def test_tabular_bars_are_as_long_as_the_values_coloured_by_sign_in_order_of_magnitude():
    t = torch.tensor([[0.5, -2.0, 1.0, 0.0, 0.25]])
    x, s = torch.ones_like(t), torch.zeros_like(t)  # gray input bars; the student draws no bar
    image = explanation_image(x, t, s, modality=Tabular())
    coloured = _chromatic(image)
    rows = np.flatnonzero(coloured.any(axis=1))
    bars = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    assert len(bars) == 4  # the zero feature has no bar
    lengths, signs, spans = [], [], []
    for bar in bars:
        line = bar[len(bar) // 2]
        cols = np.flatnonzero(coloured[line])
        colour = image[line, cols[0]].astype(int)
        lengths.append(len(cols))
        signs.append(1 if colour[0] > colour[2] else -1)
        spans.append((cols.min(), cols.max()))
    order = [1, 2, 0, 4]  # features by |value|, top to bottom
    assert signs == [int(np.sign(t[0, j])) for j in order]
    expected = np.abs(t[0, order].numpy()) / 2.0 * lengths[0]
    assert np.allclose(lengths, expected, atol=1.5)
    zero = spans[0][1] + 1  # the negative bar ends at the zero line, where the positive ones start
    assert all(abs(start - zero) <= 1 for start, _ in spans[1:])


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
    assert np.array_equal(explanation_image(x, t, s, feature_names=["a", "b"]), explanation_image(x, t, s))  # images


@pytest.mark.parametrize("size", [8, 32, 224])
def test_image_mosaic_fits_the_width_whatever_the_image_size(size):
    x, t, s = _maps((2, 3, size, size))
    image = explanation_image(x, t, s, labels=["a", "b"], title="t")
    assert image.dtype == np.uint8 and image.shape[1] == 500
    mosaic, _ = _mosaic(x.numpy(), t.numpy(), s.numpy())
    drawn = (image < 250).any(axis=2)  # non-white pixels: the mosaic (plus text) is wider than half the canvas
    columns = np.flatnonzero(drawn.any(axis=0))
    assert columns.max() < 500 and columns.max() - columns.min() > 250


@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (1, 2, 6), (1, 1, 6), (1, 4), (2, 1, 1)])
def test_zero_constant_and_nan_maps_do_not_break(shape):
    x = torch.zeros(shape)
    fig = explanation_figure(x, torch.zeros_like(x), torch.full_like(x, float("nan")))
    assert figure_to_array(fig).shape[2] == 3
    if len(shape) == 2 or shape[1:2] == (1,):  # one channel: a black line; zero maps leave the band white, no bar
        assert not _chromatic(explanation_image(x, torch.zeros_like(x), torch.zeros_like(x))).any()


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
