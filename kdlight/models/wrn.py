"""Wide ResNets (Zagoruyko & Komodakis) as in RepDistiller's ``models/wrn.py``.

Pre-activation BasicBlocks in three stages of widths ``[16k, 32k, 64k]`` after a 16-channel
stem; ``depth = 6n + 4``. As in RepDistiller, a block whose width changes applies its
``bn1 -> relu1`` to the input before both the conv path and the 1x1 shortcut. Every ReLU is
its own non-inplace ``nn.ReLU`` module and dropout (if any) is an ``nn.Dropout`` module.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class WideBasicBlock(nn.Module):
    """Pre-activation wide residual block (RepDistiller ``wrn.BasicBlock``)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(out)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` wide blocks, kept as ``.layer`` like RepDistiller."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs.

    Submodules: ``conv1`` (stem), ``block1``..``block3``, ``bn1``, ``relu``, ``avgpool``,
    ``embedding`` (flatten, ``[B, 64k]``), ``fc``.

    Args:
        depth: ``6n + 4`` (10, 16, 22, 28, 40, ...).
        widen_factor: ``k``, the width multiplier.
        num_classes: number of output logits.
        in_channels: input image channels.
        dropout: dropout between the two convs of every block (0: no Dropout module).
    """

    #: the last stage after the final BN-ReLU (pre-activation blocks: ``block3`` itself is not rectified)
    gradcam_layer: str | None = "relu"

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 2,
        num_classes: int = 100,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth = depth
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.embedding_dim = widths[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.embedding(self.avgpool(x)))


class WRN16_2(WideResNet):  # noqa: N801 - the literature's name
    """WRN-16-2 (0.70M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__(16, 2, num_classes, in_channels, dropout)


class WRN40_2(WideResNet):  # noqa: N801
    """WRN-40-2 (2.26M params for 100 classes)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__(40, 2, num_classes, in_channels, dropout)
