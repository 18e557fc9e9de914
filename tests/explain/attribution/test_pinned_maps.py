"""Maps, noise tunnels, training maps and faithfulness scores pinned to the numbers the code gave
before the attribution registry and the modality object existed (same seeds, same tiny models).

Each map is summarised by (sum, sum of |values|, a position-weighted sum), so a change in values,
signs or positions shows. The refactor kept every one bit-identical; the tolerance only absorbs
float reordering on other machines.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.explain.attribution import METHODS, AttributionConfig, attribute, input_gradient_map
from kdlight.explain.faithfulness import deletion_insertion_auc, infidelity_score

ORIGINAL_METHODS = (
    "integrated_gradients",
    "gradient_shap",
    "deeplift_shap",
    "kernel_shap",
    "shapley_value_sampling",
    "saliency",
    "input_x_gradient",
    "grad_cam",
)
KINDS = {
    "tabular": (lambda: nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 3)), (30,)),
    "image": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 3),
        ),
        (1, 8, 8),
    ),
    "signal": (
        lambda: nn.Sequential(
            nn.Conv1d(1, 4, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(4, 4, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(80, 3),
        ),
        (1, 40),
    ),
    "rgb": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)),
        (3, 8, 8),
    ),
}
PATCH = {"image": 2, "rgb": 2, "signal": 4, "tabular": None}

MAPS = {
    ("tabular", "integrated_gradients"): (0.289443886, 3.05481332, 0.219277614),
    ("tabular", "gradient_shap"): (0.857109399, 4.65609288, 0.111807401),
    ("tabular", "deeplift_shap"): (0.925970318, 3.70918056, 0.458385216),
    ("tabular", "kernel_shap"): (0.29972833, 1.57864049, 0.14900326),
    ("tabular", "shapley_value_sampling"): (0.299728326, 2.76364879, 0.204052134),
    ("tabular", "saliency"): (0.0366777633, 3.62040512, -0.0334760885),
    ("tabular", "input_x_gradient"): (0.353393722, 3.23338951, 0.215611675),
    ("image", "integrated_gradients"): (0.0664030771, 1.71667405, 0.0506476744),
    ("image", "gradient_shap"): (0.160587341, 1.6786419, -0.0325280999),
    ("image", "deeplift_shap"): (0.166502826, 1.55348157, -0.0186447473),
    ("image", "kernel_shap"): (0.299294862, 0.809198707, 0.053187319),
    ("image", "shapley_value_sampling"): (0.29929499, 3.26610961, 0.206367289),
    ("image", "saliency"): (0.177015369, 1.89259164, -0.227333922),
    ("image", "input_x_gradient"): (0.00686158123, 1.6312458, 0.0613319765),
    ("image", "grad_cam"): (0.251783397, 0.251783397, -0.0296057951),
    ("signal", "integrated_gradients"): (-0.126723575, 1.24525677, 0.0503644942),
    ("signal", "gradient_shap"): (-0.247201529, 1.48898459, -0.0187813925),
    ("signal", "deeplift_shap"): (-0.0611361774, 1.29536178, -0.0208981772),
    ("signal", "kernel_shap"): (-0.518823908, 2.04307069, 0.192281748),
    ("signal", "shapley_value_sampling"): (-0.518824024, 2.70952563, 0.155947027),
    ("signal", "saliency"): (0.302581855, 1.66866367, 0.109056224),
    ("signal", "input_x_gradient"): (-0.271603121, 1.43524905, -0.0100961563),
    ("signal", "grad_cam"): (0.163878218, 0.163878218, -0.0142221273),
    ("rgb", "integrated_gradients"): (1.02163309, 7.88169995, 0.237908233),
    ("rgb", "gradient_shap"): (0.606683141, 10.0650273, 0.334822475),
    ("rgb", "deeplift_shap"): (0.818700957, 8.55723769, 0.216038122),
    ("rgb", "kernel_shap"): (12.0939011, 14.3935779, 2.58148825),
    ("rgb", "shapley_value_sampling"): (12.0939, 25.988619, 2.41266897),
    ("rgb", "saliency"): (-0.386550991, 10.3522587, -0.181452523),
    ("rgb", "input_x_gradient"): (0.987375958, 8.05864684, 0.201706763),
    ("rgb", "grad_cam"): (1.07104205, 1.07104205, -0.070132919),
    ("image", "saliency", "smoothgrad"): (0.124268331, 1.82602744, -0.253050701),
    ("image", "grad_cam", "smoothgrad_sq"): (0.0010871615, 0.0010871615, -1.88274131e-05),
    ("signal", "grad_cam", "vargrad"): (3.05677935e-05, 3.05677935e-05, -1.66587763e-05),
    ("tabular", "integrated_gradients", "smoothgrad"): (0.286337439, 3.02053863, 0.218377697),
}
FAITHFULNESS = {
    "tabular": [
        [0.365889668, 0.454171985, 0.232825577, 0.409371436],
        [0.375301689, 0.421900183, 0.23893337, 0.401704133],
        [0.00160259416, 0.00277375383, 0.000755518558, 0.000510899466],
        [2.52606751e-05, 3.87328646e-06, 2.65637009e-05, 2.40713307e-05],
    ],
    "image": [
        [0.328073204, 0.311680615, 0.361382306, 0.318942755],
        [0.34147644, 0.305803955, 0.372600317, 0.315734506],
        [4.6396075e-05, 0.000167393446, 0.000107335254, 8.99598454e-05],
        [8.29541932e-06, 3.16915316e-06, 8.75880517e-07, 2.56461271e-06],
    ],
    "signal": [
        [0.311442465, 0.337026507, 0.32875523, 0.347810984],
        [0.320518047, 0.372973889, 0.354422867, 0.329861045],
        [0.000105660605, 0.000224070973, 9.94052243e-05, 0.000523772906],
        [3.19030846e-06, 3.43946817e-06, 1.01281239e-06, 7.72914973e-06],
    ],
}


def _setup(kind: str):
    torch.manual_seed(0)
    factory, shape = KINDS[kind]
    model = factory()
    return model, torch.randn(4, *shape), torch.tensor([0, 1, 2, 1]), torch.randn(24, *shape)


def _config(method: str, kind: str, **extra) -> AttributionConfig:
    kw = dict(method=method, n_steps=8, n_samples=4, n_baselines=4, nt_samples=2, **extra)
    if METHODS[method].perturbation:
        kw["patch_size"] = PATCH[kind]
    return AttributionConfig(**kw)


def _digest(maps: torch.Tensor) -> tuple[float, float, float]:
    m = maps.double()
    w = torch.linspace(-1, 1, m.numel(), dtype=torch.float64)
    return float(m.sum()), float(m.abs().sum()), float((m.flatten() * w).sum())


def _assert_pinned(maps: torch.Tensor, key: tuple) -> None:
    assert _digest(maps) == pytest.approx(MAPS[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("kind", list(KINDS))
def test_maps_are_the_pinned_ones(kind):
    model, x, target, train = _setup(kind)
    for method in ORIGINAL_METHODS:
        if (kind, method) in MAPS:
            _assert_pinned(attribute(model, x, target, _config(method, kind), train_inputs=train), (kind, method))


@pytest.mark.parametrize("key", [k for k in MAPS if len(k) == 3])
def test_noise_tunnels_are_the_pinned_ones(key):
    kind, method, nt = key
    model, x, target, _ = _setup(kind)
    _assert_pinned(attribute(model, x, target, _config(method, kind, noise_tunnel=nt)), key)


@pytest.mark.parametrize("kind", ["image", "signal", "rgb"])
def test_grad_cam_training_map_equals_the_evaluation_map(kind):
    """One Grad-CAM: the differentiable map is the evaluation-time map, bit for bit."""
    model, x, target, _ = _setup(kind)
    training = input_gradient_map(model, x, target, "grad_cam", create_graph=False)
    assert torch.equal(training, attribute(model, x, target, AttributionConfig("grad_cam")))
    _assert_pinned(training, (kind, "grad_cam"))


@pytest.mark.parametrize("kind", ["tabular", "image", "signal"])
def test_faithfulness_scores_are_the_pinned_ones(kind):
    model, x, target, _ = _setup(kind)
    maps = attribute(model, x, target, _config("saliency", kind))
    deletion, insertion = deletion_insertion_auc(model, x, maps, target)
    additive = infidelity_score(model, x, maps, target, seed=3, multiply_by_inputs=False)
    scaled = infidelity_score(model, x, maps, target, seed=3, multiply_by_inputs=True)
    for got, pinned in zip((deletion, insertion, scaled, additive), FAITHFULNESS[kind]):
        assert got.tolist() == pytest.approx(pinned, rel=1e-5, abs=1e-9)
