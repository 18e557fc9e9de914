"""Tests for kdlight.explain.attribution: attribute() over every method, contexts, baselines and the
training-time maps (method-specific files live in tests/explain/attribution/)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from kdlight.core.modality import Image, Signal
from kdlight.explain import attribution as A
from kdlight.explain.attribution import (
    METHODS,
    TRAINING_MAP_KINDS,
    AttributionConfig,
    attribute,
    input_gradient_map,
    is_pure,
    make_baselines,
    method_names,
)

N = 4


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def _cnn1d() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(4, 4, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 20, 3),
    )


KINDS = {"tabular": (_mlp, (30,)), "image": (_cnn, (1, 8, 8)), "signal": (_cnn1d, (1, 40))}


def _setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    factory, shape = KINDS[kind]
    model = factory()
    x = torch.randn(N, *shape)
    target = torch.tensor([0, 1, 2, 1])
    train = torch.randn(24, *shape)
    return model, x, target, train


def _fast_config(method: str, kind: str, **overrides) -> AttributionConfig:
    """Small settings so the whole file stays fast."""
    kw = dict(method=method, n_steps=8, n_samples=4, n_baselines=4, nt_samples=2)
    if METHODS[method].perturbation:
        kw["patch_size"] = {"image": 2, "signal": 4, "tabular": None}[kind]
        if kind == "tabular":
            kw["n_samples"] = 2
    kw.update(overrides)
    return AttributionConfig(**kw)


def _supported(method: str, kind: str) -> bool:
    return METHODS[method].modalities is None or kind in METHODS[method].modalities


# --------------------------------------------------------------------------------------------
# names and config


def test_method_names_and_all():
    assert method_names() == list(METHODS)
    assert set(METHODS) == {
        "integrated_gradients",
        "gradient_shap",
        "deeplift_shap",
        "kernel_shap",
        "shapley_value_sampling",
        "saliency",
        "input_x_gradient",
        "grad_cam",
        "lime",
        "occlusion",
        "lrp",
    }
    for name in A.__all__:
        assert hasattr(A, name)


def test_unknown_method_lists_names():
    with pytest.raises(ValueError, match="saliency.*grad_cam.*integrated_gradients") as info:
        AttributionConfig("lime_but_wrong")
    assert "\n" not in str(info.value)
    assert "lime_but_wrong" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_steps": 0}, "n_steps"),
        ({"n_samples": -1}, "n_samples"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
        ({"stdevs": -0.5}, "stdevs"),
        ({"baseline": "ones"}, "zeros, mean, sample"),
        ({"baseline": "sample"}, "only used by"),
        ({"noise_tunnel": "smoothgrad_cubed"}, "smoothgrad"),
        ({"nt_stdevs": 0.0}, "nt_stdevs"),
        ({"patch_size": 0}, "patch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        AttributionConfig("integrated_gradients", **kwargs)
    assert "\n" not in str(info.value)


def test_noise_tunnel_refused_for_perturbation_and_gradient_shap():
    for method in ("kernel_shap", "shapley_value_sampling", "gradient_shap"):
        with pytest.raises(ValueError, match="noise_tunnel is not supported"):
            AttributionConfig(method, noise_tunnel="smoothgrad")
    AttributionConfig("saliency", noise_tunnel="vargrad")  # fine


# --------------------------------------------------------------------------------------------
# every method on every supported input kind


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_every_kind(method, kind):
    model, x, target, train = _setup(kind)
    config = _fast_config(method, kind)
    if not _supported(method, kind):
        with pytest.raises(ValueError, match=f"{method} supports image, signal inputs, not tabular"):
            attribute(model, x, target, config)
        return
    out = attribute(model, x, target, config, train_inputs=train)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert not out.requires_grad
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


@pytest.mark.parametrize("nt", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "grad_cam"])
def test_noise_tunnel_shapes_and_seed(method, nt):
    model, x, target, _ = _setup("image")
    config = _fast_config(method, "image", noise_tunnel=nt)
    a = attribute(model, x, target, config)
    b = attribute(model, x, target, config)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# correctness against independent computations


def _logit(model, x, target):
    with torch.no_grad():
        return model(x).gather(1, target.view(-1, 1)).squeeze(1)


def _assert_complete(attr, model, x, baseline, target, rel):
    """sum_i IG_i(x) == F(x)_t - F(baseline)_t, within ``rel`` of the batch's logit scale
    (a ReLU net's path integrand has kinks, so quadrature error is relative to the logit scale,
    not to a per-sample difference that may be close to zero)."""
    expected = _logit(model, x, target) - _logit(model, baseline, target)
    with torch.no_grad():
        scale = model(x).abs().max().item()
    torch.testing.assert_close(attr.flatten(1).sum(1), expected, rtol=rel, atol=rel * scale)


@pytest.mark.parametrize("kind", list(KINDS))
def test_integrated_gradients_completeness(kind):
    model, x, target, train = _setup(kind)
    attr = attribute(model, x, target, AttributionConfig("integrated_gradients", n_steps=64))
    _assert_complete(attr, model, x, torch.zeros_like(x), target, rel=1e-2)

    config = AttributionConfig("integrated_gradients", n_steps=64, baseline="mean")
    attr = attribute(model, x, target, config, train_inputs=train)
    _assert_complete(attr, model, x, train.mean(0, keepdim=True).expand_as(x), target, rel=1e-2)


def test_integrated_gradients_completeness_smooth_model_tight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.Softplus(), nn.Linear(16, 3))
    x, target = torch.randn(N, 30), torch.tensor([0, 1, 2, 1])
    attr = attribute(model, x, target, AttributionConfig("integrated_gradients", n_steps=64))
    _assert_complete(attr, model, x, torch.zeros_like(x), target, rel=1e-4)


def test_deeplift_summation_to_delta_with_zero_baseline():
    model, x, target, _ = _setup("image")
    attr = attribute(model, x, target, AttributionConfig("deeplift_shap", baseline="zeros"))
    expected = _logit(model, x, target) - _logit(model, torch.zeros_like(x), target)
    torch.testing.assert_close(attr.flatten(1).sum(1), expected, rtol=1e-4, atol=1e-4)


def _manual_grad(model, x, target):
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target.view(-1, 1)).sum().backward()
    return x.grad


@pytest.mark.parametrize("kind", list(KINDS))
def test_saliency_and_input_x_gradient_match_autograd(kind):
    model, x, target, _ = _setup(kind)
    grad = _manual_grad(copy.deepcopy(model), x, target)
    sal = attribute(model, x, target, AttributionConfig("saliency"))
    ixg = attribute(model, x, target, AttributionConfig("input_x_gradient"))
    torch.testing.assert_close(sal, grad)
    torch.testing.assert_close(ixg, x * grad)


def _captum_reference(method, model, x, target, config, baselines):
    """The method computed by Captum itself, with the RNG seeded as the config says."""
    from captum.attr import DeepLift, GradientShap, InputXGradient, IntegratedGradients, Saliency

    inputs = x.clone().requires_grad_(True)
    torch.manual_seed(config.seed)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(inputs, baselines=baselines, target=target, n_steps=config.n_steps)
    if method == "gradient_shap":
        return GradientShap(model).attribute(
            inputs, baselines=baselines, target=target, n_samples=config.n_samples, stdevs=config.stdevs
        )
    if method == "deeplift_shap":
        return DeepLift(model).attribute(inputs, baselines=baselines, target=target)
    return {
        "saliency": lambda: Saliency(model).attribute(inputs, target=target, abs=False),
        "input_x_gradient": lambda: InputXGradient(model).attribute(inputs, target=target),
    }[method]()


@pytest.mark.parametrize(
    "method", ["integrated_gradients", "saliency", "input_x_gradient", "gradient_shap", "deeplift_shap"]
)
def test_gradient_methods_give_captum_s_own_values(method):
    """kdlight's one-seed gradients and contexts change no value: Captum called directly agrees."""
    model, x, target, train = _setup("image")
    config = _fast_config(method, "image", baseline="mean" if method != "gradient_shap" else "sample")
    if method in ("saliency", "input_x_gradient"):
        config = _fast_config(method, "image")
    ours = attribute(model, x, target, config, train_inputs=train)
    baselines = make_baselines(A.baseline_kind(config, True) or "zeros", x, train, config.n_baselines, config.seed)
    model.eval()
    torch.testing.assert_close(
        ours, _captum_reference(method, model, x, target, config, baselines).detach(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "method, noise_tunnel, pure",
    [
        ("integrated_gradients", None, True),
        ("saliency", None, True),
        ("input_x_gradient", None, True),
        ("occlusion", None, True),
        ("saliency", "smoothgrad", False),
        ("gradient_shap", None, False),
        ("deeplift_shap", None, False),
        ("grad_cam", None, False),
        ("kernel_shap", None, False),
        ("lime", None, False),
        ("lrp", None, False),
    ],
)
def test_is_pure_marks_methods_without_random_draws_or_hooks(method, noise_tunnel, pure):
    assert is_pure(AttributionConfig(method=method, noise_tunnel=noise_tunnel)) is pure
    assert METHODS[method].pure is (not METHODS[method].random and not METHODS[method].hooks)


def test_pure_methods_touch_no_global_rng():
    """Pure calls neither read nor re-seed the global RNGs (they may run beside training)."""
    model, x, target, _ = _setup("image")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    before = _rng_snapshot()
    for method in [name for name, m in METHODS.items() if m.pure]:
        attribute(model, x, target, _fast_config(method, "image"))
    after = _rng_snapshot()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------------------------
# randomness


def _rng_snapshot():
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


@pytest.mark.parametrize("method", ["gradient_shap", "kernel_shap", "shapley_value_sampling", "deeplift_shap"])
def test_seeded_and_global_rng_untouched(method):
    model, x, target, train = _setup("signal")
    config = _fast_config(method, "signal")
    before = _rng_snapshot()
    a = attribute(model, x, target, config, train_inputs=train)
    b = attribute(model, x, target, config, train_inputs=train)
    after = _rng_snapshot()
    assert torch.equal(a, b)
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert before[2] == after[2]
    if method != "deeplift_shap":  # deterministic given the baselines
        c = attribute(model, x, target, _fast_config(method, "signal", seed=1), train_inputs=train)
        assert not torch.equal(a, c)


def test_noise_tunnel_leaves_global_rng():
    model, x, target, _ = _setup("tabular")
    before = _rng_snapshot()
    attribute(model, x, target, _fast_config("saliency", "tabular", noise_tunnel="smoothgrad"))
    after = _rng_snapshot()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_same_config_same_randomness_for_teacher_and_student():
    teacher, x, target, train = _setup("image")
    student = copy.deepcopy(teacher)
    config = _fast_config("gradient_shap", "image")
    t = attribute(teacher, x, target, config, train_inputs=train)
    assert torch.equal(t, attribute(student, x, target, config, train_inputs=train))
    other = attribute(_cnn(), x, target, config, train_inputs=train)
    assert other.shape == x.shape and not torch.equal(t, other)


def test_auto_baseline_is_sample_for_shap_with_train_inputs():
    model, x, target, train = _setup("tabular")
    auto = attribute(model, x, target, _fast_config("gradient_shap", "tabular"), train_inputs=train)
    sample = attribute(
        model,
        x,
        target,
        _fast_config("gradient_shap", "tabular", baseline="sample"),
        train_inputs=train,
    )
    zeros = attribute(
        model,
        x,
        target,
        _fast_config("gradient_shap", "tabular", baseline="zeros"),
        train_inputs=train,
    )
    assert torch.equal(auto, sample)
    assert not torch.equal(auto, zeros)
    # without training data 'auto' falls back to zeros
    no_train = attribute(model, x, target, _fast_config("gradient_shap", "tabular"))
    assert torch.equal(no_train, zeros)


# --------------------------------------------------------------------------------------------
# baselines and masks


def test_make_baselines():
    x = torch.randn(3, 1, 8, 8)
    train = torch.randn(10, 1, 8, 8)
    zeros = make_baselines("zeros", x, None, 4, 0)
    assert zeros.shape == (1, 1, 8, 8) and not zeros.any()
    mean = make_baselines("mean", x, train, 4, 0)
    torch.testing.assert_close(mean, train.mean(0, keepdim=True))
    a = make_baselines("sample", x, train, 4, 0)
    b = make_baselines("sample", x, train, 4, 0)
    c = make_baselines("sample", x, train, 4, 1)
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert all(any(torch.equal(row, t) for t in train) for row in a)
    assert make_baselines("sample", x, train, 50, 0).shape[0] == 10
    with pytest.raises(ValueError, match="shape"):
        make_baselines("mean", x, torch.randn(5, 30), 4, 0)


def test_mean_baseline_without_train_inputs_errors():
    model, x, target, _ = _setup("tabular")
    with pytest.raises(ValueError, match="train_inputs") as info:
        attribute(model, x, target, AttributionConfig("integrated_gradients", baseline="mean"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="train_inputs"):
        attribute(model, x, target, AttributionConfig("gradient_shap", baseline="sample"))
    with pytest.raises(ValueError, match="train_inputs"):
        make_baselines("sample", x, None, 4, 0)


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.perturbation])
def test_perturbation_on_large_image_needs_patch_size(method):
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="set patch_size") as info:
        attribute(model, x, torch.tensor([0, 1]), AttributionConfig(method))
    assert "\n" not in str(info.value)


def _multichannel(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A tiny CNN and a 3-channel input: an image [N, 3, 8, 8] or a signal [N, 3, 16]."""
    torch.manual_seed(0)
    if kind == "image":
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        return model, torch.randn(N, 3, 8, 8)
    model = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    return model, torch.randn(N, 3, 16)


@pytest.mark.parametrize("kind", ["image", "signal"])
@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.perturbation])
def test_perturbation_methods_on_several_channels(method, kind):
    """A mask shared across channels: every element of a patch (all channels) gets one value."""
    model, x = _multichannel(kind)
    target = torch.tensor([0, 1, 2, 1])
    config = AttributionConfig(method, patch_size=2, n_samples=3, baseline="zeros")
    maps = attribute(model, x, target, config)
    assert maps.shape == x.shape and maps.dtype == torch.float32 and torch.isfinite(maps).all()
    modality = Image() if kind == "image" else Signal()
    mask = modality.feature_mask(x, 2).expand(1, *x.shape[1:]).flatten()
    flat = maps.flatten(1)
    for group in mask.unique():
        values = flat[:, mask == group]
        assert torch.allclose(values, values[:, :1].expand_as(values)), int(group)
    assert flat.abs().sum() > 0
    if method == "shapley_value_sampling":  # efficiency: per sample, the groups' values add up to f(x) - f(0)
        with torch.no_grad():
            gap = (model(x) - model(torch.zeros_like(x))).gather(1, target.view(-1, 1)).squeeze(1)
        first = torch.stack([(mask == g).nonzero()[0, 0] for g in mask.unique()])
        assert torch.allclose(flat[:, first].sum(1), gap, atol=1e-5)


# --------------------------------------------------------------------------------------------
# surrounding context: no_grad, inference_mode, autocast; model state untouched

CONTEXT_METHODS = ["saliency", "integrated_gradients", "gradient_shap", "deeplift_shap", "grad_cam"]


@pytest.mark.parametrize("method", CONTEXT_METHODS)
def test_works_under_no_grad_inference_mode_and_autocast(method):
    model, x, target, train = _setup("image")
    config = _fast_config(method, "image")
    reference = attribute(model, x, target, config, train_inputs=train)

    with torch.no_grad():
        out = attribute(model, x, target, config, train_inputs=train)
    torch.testing.assert_close(out, reference)

    with torch.inference_mode():
        xi, ti, tri = x.clone(), target.clone(), train.clone()
        assert xi.is_inference()
        out = attribute(model, xi, ti, config, train_inputs=tri)
    torch.testing.assert_close(out, reference)

    xq = x.to(torch.bfloat16)  # a bf16 input, as produced under autocast
    reference_q = attribute(model, xq.float(), target, config, train_inputs=train)
    for inputs in (x, xq):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.is_autocast_enabled("cpu")
            out = attribute(model, inputs, target, config, train_inputs=train)
            assert torch.is_autocast_enabled("cpu")  # the caller's autocast is left as it was
        assert out.dtype == torch.float32 and out.shape == x.shape
        # computed in fp32 with autocast off: identical to the plain fp32 computation
        torch.testing.assert_close(out, reference if inputs is x else reference_q)


@pytest.mark.parametrize("method", METHODS)
def test_model_state_untouched(method):
    model, x, target, train = _setup("image")
    model.train()
    model[1].eval()  # mixed flags, as Lightning may leave them
    flags = [m.training for m in model.modules()]
    model[0].weight.grad = torch.full_like(model[0].weight, 3.0)
    model[0].bias.requires_grad_(False)
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    attribute(model, x, target, _fast_config(method, "image"), train_inputs=train)

    assert [m.training for m in model.modules()] == flags
    for n, p in model.named_parameters():
        assert p.requires_grad == requires[n], n
        assert torch.equal(p, params[n]), n
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    assert not model._forward_hooks and not model[0]._forward_hooks
    assert all("rule" not in m.__dict__ and "activations" not in m.__dict__ for m in model.modules())  # LRP's


def test_eval_mode_used_for_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.Dropout(0.9), nn.ReLU(), nn.Linear(16, 3)).train()
    x, target = torch.randn(N, 30), torch.tensor([0, 1, 2, 1])
    a = attribute(model, x, target, AttributionConfig("saliency"))
    b = attribute(model, x, target, AttributionConfig("saliency"))
    assert torch.equal(a, b) and model.training
    torch.testing.assert_close(a, _manual_grad(copy.deepcopy(model).eval(), x, target))


# --------------------------------------------------------------------------------------------
# grad_cam specifics


def test_grad_cam_unknown_layer_lists_names():
    model, x, target, _ = _setup("image")
    with pytest.raises(ValueError, match="no_such_layer.*valid names are: 0, 1, 2") as info:
        attribute(model, x, target, AttributionConfig("grad_cam", layer="no_such_layer"))
    assert "\n" not in str(info.value)


def test_grad_cam_layer_default_and_broadcast():
    model, x, target, _ = _setup("image")
    default = attribute(model, x, target, AttributionConfig("grad_cam"))
    explicit = attribute(model, x, target, AttributionConfig("grad_cam", layer="2"))
    torch.testing.assert_close(default, explicit)
    assert (default >= 0).all()  # relu_attributions
    x3 = torch.randn(N, 3, 8, 8)
    model3 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    out = attribute(model3, x3, target, AttributionConfig("grad_cam", layer="0"))
    assert out.shape == x3.shape and torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="spatial"):
        attribute(model, x, target, AttributionConfig("grad_cam", layer="5"))


# --------------------------------------------------------------------------------------------
# training-time maps


@pytest.mark.parametrize("kind", TRAINING_MAP_KINDS)
@pytest.mark.parametrize("data", ["image", "signal", "tabular"])
def test_input_gradient_map_trains_parameters(kind, data):
    model, x, target, _ = _setup(data)
    if kind == "grad_cam" and data == "tabular":
        with pytest.raises(ValueError, match="spatial"):
            input_gradient_map(model, x, target, kind, create_graph=True)
        return
    model.train()
    emap = input_gradient_map(model, x, target, kind, create_graph=True, n_steps=4)
    assert emap.shape == x.shape and emap.dtype == torch.float32 and emap.requires_grad
    assert all(p.grad is None for p in model.parameters())
    (emap - torch.randn_like(emap)).pow(2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # the first layer's weights shape every map
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0

    detached = input_gradient_map(model, x, target, kind, create_graph=False, n_steps=4)
    assert not detached.requires_grad and detached.grad_fn is None
    torch.testing.assert_close(detached, emap.detach())


def test_input_gradient_map_matches_captum_versions():
    model, x, target, _ = _setup("image")
    model.eval()
    for kind in ("saliency", "input_x_gradient", "grad_cam"):
        mine = input_gradient_map(model, x, target, kind, create_graph=False)
        ref = attribute(model, x, target, AttributionConfig(kind))
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    ig = input_gradient_map(model, x, target, "integrated_gradients", create_graph=False, n_steps=64)
    _assert_complete(ig, model, x, torch.zeros_like(x), target, rel=2e-2)


def test_input_gradient_map_frozen_teacher_under_no_grad_and_inference_mode():
    teacher, x, target, _ = _setup("image")
    teacher.eval().requires_grad_(False)
    with torch.no_grad():
        a = input_gradient_map(teacher, x, target, "grad_cam", create_graph=False, layer="2")
    with torch.inference_mode():
        b = input_gradient_map(teacher, x.clone(), target.clone(), "saliency", create_graph=False)
    assert a.shape == x.shape and b.shape == x.shape
    assert a.abs().sum() > 0 and b.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_input_gradient_map_unknown_kind():
    model, x, target, _ = _setup("tabular")
    with pytest.raises(ValueError, match="saliency, input_x_gradient, grad_cam"):
        input_gradient_map(model, x, target, "deeplift", create_graph=False)


def test_deeplift_through_maxpool_under_deterministic_mode_does_not_fail():
    """Trainer(deterministic=True) turns on strict deterministic algorithms process-wide."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    torch.use_deterministic_algorithms(True)
    try:
        out = attribute(
            model, torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), AttributionConfig("deeplift_shap")
        )
        assert (
            torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        )
    finally:
        torch.use_deterministic_algorithms(False)
    assert out.shape == (4, 1, 8, 8)
