"""The fake-quantised twin of an int8 model, and the chance-level copy of an int8 student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.compression.quantization import INT8_MODES, quantize_int8
from kdlight.compression.twin import fake_quantized_twin, int8_layers
from kdlight.models import MLP
from kdlight.training.reinit import reinitialized

EPS = torch.finfo(torch.float32).eps


def float_rounding_bound(x: torch.Tensor, w_hat: torch.Tensor, mode: str) -> torch.Tensor:
    """Bound on ``|twin - int8|`` of one Linear layer: both compute ``x_hat @ w_hat.T`` with the same
    int8 values, the twin in float, the int8 kernel as scaled integer products minus the activation
    zero-point correction, so they differ by float32 rounding of those terms. ``dynamic``: the input
    step is ``s_x = (max(x, 0) - min(x, 0)) / 255`` (asymmetric int8 per row), so ``|x_hat| <= |x| + s_x``
    and the zero-point term ``s_x |zp| <= 128 s_x + |min(x, 0)|``."""
    if mode == "weight_only":
        magnitude = x.abs() @ w_hat.abs().T
    else:
        s_x = (x.clamp(min=0).amax(1) - x.clamp(max=0).amin(1)) / 255
        zero_point_term = 128 * s_x + x.clamp(max=0).amin(1).abs()
        magnitude = (x.abs() + s_x[:, None]) @ w_hat.abs().T + zero_point_term[:, None] * w_hat.abs().sum(1)
    return (x.shape[1] + 4) * EPS * magnitude


@pytest.mark.parametrize("mode", INT8_MODES)
def test_the_twin_computes_the_int8_layer_to_float_rounding_with_the_same_int8_weights(mode):
    float_model = nn.Sequential(nn.Linear(48, 16))
    x = 3 * torch.randn(64, 48)
    quantized = quantize_int8(float_model, mode)
    twin = fake_quantized_twin(quantized)
    w_hat = quantized[0].weight.dequantize()
    assert torch.equal(twin[0].weight, w_hat) and not torch.equal(w_hat, float_model[0].weight)
    with torch.no_grad():
        int8_out, twin_out, float_out = quantized(x), twin(x), float_model(x)
    difference = (twin_out - int8_out).abs()
    assert (difference <= float_rounding_bound(x, w_hat, mode) + EPS * int8_out.abs()).all()
    assert difference.max() < 0.01 * (float_out - int8_out).abs().max()  # far below the int8 rounding itself
    assert int8_layers(quantized) == ["0"] and int8_layers(twin) == []  # the int8 model is untouched


def test_the_twin_passes_input_gradients_straight_through_the_activation_rounding():
    layer = nn.Linear(20, 5)
    x = torch.randn(8, 20, requires_grad=True)
    dynamic = quantize_int8(layer, "dynamic")
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(dynamic(x)[:, 2].sum(), x)
    twin = fake_quantized_twin(dynamic)
    (gradient,) = torch.autograd.grad(twin(x)[:, 2].sum(), x)
    # straight-through: d y_2 / d x = row 2 of the dequantised int8 weight, for every sample
    assert torch.allclose(gradient, dynamic.weight.dequantize()[2].expand(8, 20))


def test_the_twin_of_a_weight_only_model_has_its_input_gradients():
    model = MLP(in_features=16, num_classes=4, hidden=[12])
    x = torch.randn(6, 16)
    quantized = quantize_int8(model, "weight_only")
    twin = fake_quantized_twin(quantized)
    grads = []
    for net in (quantized, twin):
        xi = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(net(xi)[:, 1].sum(), xi)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-7)
    assert torch.equal(twin(x).argmax(-1), quantized(x).argmax(-1))


def test_hooks_on_an_int8_layer_fire_on_its_twin_and_a_float_model_is_one_line():
    quantized = quantize_int8(MLP(in_features=8, num_classes=3, hidden=[4]), "dynamic")
    seen = []
    quantized.classifier.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    fake_quantized_twin(quantized)(torch.randn(2, 8))
    assert seen == [torch.Size([2, 3])]
    with pytest.raises(ValueError, match="has no torchao int8 layer; quantise it first") as info:
        fake_quantized_twin(MLP(in_features=8, num_classes=3, hidden=[4]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", INT8_MODES)
def test_reinitialized_int8_student_is_the_same_float_architecture_freshly_drawn(mode):
    trained = MLP(in_features=16, num_classes=4, hidden=[12])
    quantized = quantize_int8(trained, mode)
    fresh = reinitialized(quantized, seed=3)
    assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in fresh.parameters())
    assert [(n, type(m)) for n, m in fresh.named_modules()] == [(n, type(m)) for n, m in trained.named_modules()]
    trained_weights = {n: p.dequantize() for n, p in quantized.named_parameters()}
    assert all(not torch.equal(p, trained_weights[n]) for n, p in fresh.named_parameters())
    # the same draws as re-initialising the float student: reset_parameters runs in the same order
    expected = reinitialized(trained, seed=3).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    assert int8_layers(quantized)  # the int8 student itself is untouched


def chance_and_agreement(student: nn.Module, digits) -> dict[str, float]:
    """The explanation callback's saliency rank correlation and its chance level for ``student``."""
    from kdlight import DistillationModule
    from kdlight.explain import ExplanationAgreement

    from conftest import tiny_trainer

    torch.manual_seed(0)
    teacher = MLP(in_features=64, num_classes=10, hidden=[16])
    callback = ExplanationAgreement(
        methods=["saliency"],
        num_probes=16,
        log_images=False,
        faithfulness=False,
        surrogate=False,
        metrics=["rank_correlation"],
    )
    module = DistillationModule(teacher, student, teacher_as_given=True, allow_teacher_data_overlap=True)
    tiny_trainer(limit_val_batches=1, callbacks=[callback]).validate(module, datamodule=digits, verbose=False)
    found = {k.rsplit("/", 1)[-1]: float(v) for k, v in callback.last_results.items() if "saliency/" in k}
    return {k: v for k, v in found.items() if k in ("rank_correlation", "chance_rank_correlation")}


def test_the_explanation_callback_gives_an_int8_student_the_chance_level_of_its_float_architecture(digits):
    torch.manual_seed(1)
    student = MLP(in_features=64, num_classes=10, hidden=[32])
    as_float = chance_and_agreement(student, digits)
    as_int8 = chance_and_agreement(quantize_int8(student, "weight_only"), digits)
    assert set(as_int8) == {"rank_correlation", "chance_rank_correlation"}
    # the chance student is the float architecture re-drawn with the callback's seed: the same model
    assert as_int8["chance_rank_correlation"] == pytest.approx(as_float["chance_rank_correlation"], abs=1e-6)
    as_twin = chance_and_agreement(fake_quantized_twin(quantize_int8(student, "dynamic")), digits)
    assert -1 <= as_twin["rank_correlation"] <= 1 and -1 <= as_twin["chance_rank_correlation"] <= 1
    # a dynamic int8 student given as is (no gradient through its kernels) is explained by its twin
    as_dynamic = chance_and_agreement(quantize_int8(student, "dynamic"), digits)
    assert as_dynamic["rank_correlation"] == pytest.approx(as_twin["rank_correlation"], abs=1e-6)
