"""The one Grad-CAM: against its formula, its default layer, and as a training map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlight.core.modality import Image, Signal
from kdlight.explain.attribution import (
    AttributionConfig,
    attribute,
    grad_cam_layer_name,
    input_gradient_map,
    layer_output_shape,
)


class ConvLinear(nn.Module):
    """``conv`` (the explained layer) -> flatten -> linear: d logit_t / d A = L[t], known exactly."""

    gradcam_layer = "conv"

    def __init__(self, conv: nn.Module, features: int) -> None:
        super().__init__()
        self.conv, self.head = conv, nn.Linear(features, 3)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


def _expected_cam(model: ConvLinear, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c mean_positions(dlogit/dA_c) * A_c), with the gradient read off the linear head."""
    with torch.no_grad():
        activation = model.conv(x)
        grad = model.head.weight[target].view_as(activation)
        weights = grad.flatten(2).mean(2).view(*activation.shape[:2], *(1,) * (activation.dim() - 2))
        return F.relu((weights * activation).sum(1, keepdim=True))


def test_image_map_is_the_formula_resized_bilinearly():
    torch.manual_seed(0)
    model = ConvLinear(nn.Conv2d(2, 3, 3, stride=2, padding=1), 3 * 4 * 4)
    x, target = torch.randn(4, 2, 8, 8), torch.tensor([0, 1, 2, 1])
    cam = F.interpolate(_expected_cam(model, x, target), size=(8, 8), mode="bilinear", align_corners=False)
    maps = attribute(model, x, target, AttributionConfig("grad_cam"))
    torch.testing.assert_close(maps, cam.expand_as(x), rtol=1e-5, atol=1e-6)


def test_signal_map_is_the_formula_resized_linearly():
    torch.manual_seed(0)
    model = ConvLinear(nn.Conv1d(1, 3, 3, stride=2, padding=1), 3 * 10)
    x, target = torch.randn(4, 1, 20), torch.tensor([0, 1, 2, 1])
    cam = F.interpolate(_expected_cam(model, x, target), size=20, mode="linear", align_corners=False)
    torch.testing.assert_close(attribute(model, x, target, AttributionConfig("grad_cam")), cam, rtol=1e-5, atol=1e-6)
    # the training map is the same function, differentiable
    train = input_gradient_map(model, x, target, "grad_cam", create_graph=True, modality=Signal())
    assert train.requires_grad
    torch.testing.assert_close(train.detach(), cam, rtol=1e-5, atol=1e-6)


def test_default_layer_is_the_declared_gradcam_layer_else_the_last_conv():
    torch.manual_seed(0)
    model = ConvLinear(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1)), 2 * 64)
    assert grad_cam_layer_name(model, None) == "conv"
    assert grad_cam_layer_name(model, "conv.0") == "conv.0" and grad_cam_layer_name(model, "nope") is None
    model.gradcam_layer = None  # nothing declared: the last conv in registration order
    assert grad_cam_layer_name(model, None) == "conv.2"
    model.gradcam_layer = "conv"
    x = torch.randn(2, 1, 8, 8)
    assert layer_output_shape(model, "conv", (1, 8, 8)) == (2, 2, 8, 8)
    torch.testing.assert_close(
        attribute(model, x, 0, AttributionConfig("grad_cam")),
        attribute(model, x, 0, AttributionConfig("grad_cam", layer="conv")),
    )


def test_layer_errors_are_one_line():
    model = ConvLinear(nn.Conv2d(1, 2, 3, padding=1), 2 * 64)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(
        ValueError,
        match=r"model has no submodule 'conf' for grad_cam; valid names are: conv, head; did you mean conv\?",
    ):
        attribute(model, x, 0, AttributionConfig("grad_cam", layer="conf"))
    with pytest.raises(ValueError, match="must be spatial like the input"):
        attribute(model, x, 0, AttributionConfig("grad_cam", layer="head"))
    with pytest.raises(ValueError, match="no gradcam_layer or Conv1d/Conv2d to default to; set layer to one of: 0, 1"):
        input_gradient_map(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), x, 0, "grad_cam", create_graph=False, modality=Image()
        )


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("kind", ["image", "signal"])
def test_maps_equal_captums_layer_grad_cam_resized_and_leave_the_inputs_alone(kind, frozen):
    from captum.attr import LayerAttribution, LayerGradCam

    from kdlight.models import CNN1d, CNN2d

    torch.manual_seed(0)
    model, x = (
        (CNN2d(2, 4, channels=[4, 6]), torch.randn(5, 2, 8, 8))
        if kind == "image"
        else (CNN1d(2, 4, channels=[4, 6]), torch.randn(5, 2, 16))
    )
    model.eval().requires_grad_(not frozen)
    target = torch.tensor([0, 1, 2, 3, 1])
    layer = model.get_submodule(model.gradcam_layer)
    cam = LayerGradCam(model, layer).attribute(x.clone().requires_grad_(), target=target, relu_attributions=True)
    mode = "bilinear" if kind == "image" else "linear"
    expected = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=mode).expand_as(x)
    maps = attribute(model, x, target, AttributionConfig("grad_cam"))
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    assert not x.requires_grad and all(p.grad is None for p in model.parameters())


def test_a_layer_returning_a_tuple_is_explained_by_its_first_output():
    class TupleConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x), "extra"

    class Model(nn.Module):
        gradcam_layer = "block"

        def __init__(self) -> None:
            super().__init__()
            self.block, self.head = TupleConv(), nn.Linear(3 * 4 * 4, 3)

        def forward(self, x):
            activation, extra = self.block(x)
            assert extra == "extra"
            return self.head(activation.flatten(1))

    torch.manual_seed(0)
    model, x, target = Model(), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    reference = ConvLinear(model.block.conv, 3 * 4 * 4)
    reference.head = model.head
    cam = F.interpolate(_expected_cam(reference, x, target), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(attribute(model, x, target, AttributionConfig("grad_cam")), cam, rtol=1e-5, atol=1e-6)


def test_an_in_place_op_after_the_layer_is_explained_on_its_result():
    class InPlace(ConvLinear):
        def forward(self, x):
            return self.head(self.conv(x).relu_().flatten(1))

    torch.manual_seed(0)
    model, x, target = (
        InPlace(nn.Conv2d(1, 3, 3, stride=2, padding=1), 3 * 4 * 4),
        torch.randn(4, 1, 8, 8),
        torch.tensor([0, 1, 2, 1]),
    )
    with torch.no_grad():
        activation = F.relu(model.conv(x))
        weights = model.head.weight[target].view_as(activation).mean((2, 3), keepdim=True)
        cam = F.interpolate(F.relu((weights * activation).sum(1, keepdim=True)), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(attribute(model, x, target, AttributionConfig("grad_cam")), cam, rtol=1e-5, atol=1e-6)
