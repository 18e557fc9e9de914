"""The method registry: one declaration per method, metadata read from it, methods by class path."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from kdlight.explain.attribution import (
    METHODS,
    TRAINING_MAP_KINDS,
    AttributionConfig,
    Method,
    attribute,
    baseline_kind,
    get_method,
    input_gradient_map,
    method_names,
    register,
)


def test_every_method_is_declared_once_with_consistent_metadata():
    assert method_names() == list(METHODS) and len(set(METHODS)) == len(METHODS)
    for name, method in METHODS.items():
        assert issubclass(method, Method) and method.name == name
        assert method.pure is (not method.random and not method.hooks)
        assert not method.baseline_distribution or method.takes_baseline
        assert method.modalities is None or method.modalities <= {"image", "signal", "tabular"}
    assert TRAINING_MAP_KINDS == ("saliency", "input_x_gradient", "grad_cam", "integrated_gradients")
    assert [n for n, m in METHODS.items() if m.local] == ["saliency", "grad_cam"]  # infidelity adds noise
    assert [n for n, m in METHODS.items() if m.explains_layer] == ["grad_cam"]


def test_unknown_names_are_one_line_with_the_valid_names():
    with pytest.raises(
        ValueError,
        match=r"unknown attribution method 'salency' \(did you mean 'saliency'\?\); "
        r"valid methods are: saliency, .*, lrp, or the class path",
    ) as info:
        get_method("salency")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="cannot import attribution method 'no_such_pkg.Method'.*valid methods"):
        AttributionConfig("no_such_pkg.Method")
    with pytest.raises(ValueError, match="'torch.nn.Linear' is not a subclass of kdlight.explain.attribution.Method"):
        AttributionConfig("torch.nn.Linear")


def test_register_refuses_a_second_method_of_the_same_name():
    class Other(Method):
        name = "saliency"

    with pytest.raises(ValueError, match="already registered"):
        register(Other)
    with pytest.raises(TypeError, match="Method subclass"):
        register(nn.Linear)
    assert METHODS["saliency"] is not Other


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user's module, outside kdlight, with a Method subclass: double the saliency map."""
    (tmp_path / "my_methods.py").write_text(
        textwrap.dedent("""
        import torch
        from kdlight.explain.attribution import Method


        class DoubleSaliency(Method):
            local = True

            def attribute(self, model, inputs, target, config, *, baselines, modality):
                x = inputs.clone().requires_grad_(True)
                score = model(x).gather(1, target.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(score, x)
                return 2 * grad
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_methods.DoubleSaliency"


def test_a_user_method_by_class_path(user_package):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    config = AttributionConfig(user_package, baseline="zeros")
    method = get_method(user_package)
    assert method.local and method.pure and get_method(user_package) is method
    assert baseline_kind(config, True) is None  # takes no baseline by default
    saliency = attribute(model, x, target, AttributionConfig("saliency"))
    torch.testing.assert_close(attribute(model, x, target, config), 2 * saliency)
    with pytest.raises(ValueError, match="noise_tunnel is not supported"):
        AttributionConfig(user_package, noise_tunnel="smoothgrad")
    with pytest.raises(ValueError, match="unknown map kind"):  # no training map declared
        input_gradient_map(model, x, target, user_package, create_graph=False)


def test_a_method_refuses_modalities_it_does_not_declare():
    model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"grad_cam supports image, signal inputs, not tabular inputs \[F\]") as info:
        attribute(model, torch.randn(2, 5), 0, AttributionConfig("grad_cam"))
    assert "\n" not in str(info.value)
