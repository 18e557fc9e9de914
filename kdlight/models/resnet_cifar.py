"""CIFAR ResNets of the knowledge-distillation literature.

Faithful to RepDistiller's ``models/resnet.py`` (Tian et al., CRD, ICLR 2020): BasicBlocks in
three stages, a 3x3 stem, 1x1-conv+BN projection shortcuts, Kaiming-normal (fan_out) conv
init. Widths ``[stem, stage1, stage2, stage3]``; ``depth = 6n + 2`` with ``n`` blocks per stage.

Differences that do not change the function or parameter count: every ReLU is its own
``nn.ReLU`` module (never functional, never inplace, never reused) so hooks and Captum
DeepLift see each non-linearity once; pooling is ``AdaptiveAvgPool2d(1)`` (equal to
RepDistiller's ``AvgPool2d(8)`` on 32x32 inputs); the pooled vector passes through the named
``embedding`` flatten; the ``is_feat``/``preact`` outputs are replaced by forward hooks on
named layers (``layer1``..``layer3``).
"""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: ``relu2(bn2(conv2(relu1(bn1(conv1 x)))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with BasicBlocks in three stages (RepDistiller ``ResNet``).

    Submodules: ``conv1``, ``bn1``, ``relu`` (stem), ``layer1``..``layer3``, ``avgpool``,
    ``embedding`` (flatten of the pooled features, ``[B, widths[3]]``), ``fc``.

    Args:
        depth: ``6n + 2`` (8, 20, 32, 56, 110, ...).
        widths: ``[stem, stage1, stage2, stage3]`` channels, e.g. ``[16, 16, 32, 64]``
            (resnet20/56/110) or ``[32, 64, 128, 256]`` (the "x4" nets).
        num_classes: number of output logits.
        in_channels: input image channels.
    """

    gradcam_layer: str | None = "layer3"  # the last stage's output (after its final ReLU)

    def __init__(
        self,
        depth: int = 20,
        widths: list[int] = [16, 16, 32, 64],  # noqa: B006
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be [stem, stage1, stage2, stage3], got {widths}")
        n = (depth - 2) // 6
        self.depth = depth
        self.widths = list(widths)
        self.num_classes = num_classes
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(widths[1], n)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Flatten(1)
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        self.embedding_dim = widths[3] * BasicBlock.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.embedding(self.avgpool(x)))


class ResNet8x4(CifarResNet):
    """resnet8x4: depth 8, widths [32, 64, 128, 256] (1.23M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__(8, [32, 64, 128, 256], num_classes, in_channels)


class ResNet32x4(CifarResNet):
    """resnet32x4: depth 32, widths [32, 64, 128, 256] (7.43M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__(32, [32, 64, 128, 256], num_classes, in_channels)


class ResNet20(CifarResNet):
    """resnet20: depth 20, widths [16, 16, 32, 64] (0.28M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__(20, [16, 16, 32, 64], num_classes, in_channels)


class ResNet56(CifarResNet):
    """resnet56: depth 56, widths [16, 16, 32, 64] (0.86M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__(56, [16, 16, 32, 64], num_classes, in_channels)


class ResNet110(CifarResNet):
    """resnet110: depth 110, widths [16, 16, 32, 64] (1.73M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__(110, [16, 16, 32, 64], num_classes, in_channels)
