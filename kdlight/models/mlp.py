"""Multi-layer perceptron for tabular data or flattened small inputs."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected network: ``layers`` -> ``embedding`` -> ``classifier``.

    Any input ``[B, ...]`` is flattened to ``[B, in_features]`` (so 8x8 digits work with the
    default ``in_features=64``). Each hidden block is ``Linear -> ReLU (-> Dropout)``; the last
    hidden activation passes through the identity module ``embedding`` so it can be hooked.

    Args:
        in_features: number of input features after flattening.
        num_classes: number of output logits.
        hidden: widths of the hidden layers (may be empty: a linear model).
        dropout: dropout probability after every hidden ReLU (no Dropout module when 0).
    """

    gradcam_layer: str | None = None  # no spatial layer: no Grad-CAM

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden: list[int] = [256, 256],  # noqa: B006 - never mutated; list keeps YAML simple
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.flatten = nn.Flatten(1)
        blocks: list[nn.Module] = []
        width = in_features
        for h in hidden:
            block: list[nn.Module] = [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*block))
            width = h
        self.layers = nn.Sequential(*blocks)
        self.embedding = nn.Identity()
        self.classifier = nn.Linear(width, num_classes)
        self.embedding_dim = width

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} features after flattening, got {x.shape[1]}")
        return self.classifier(self.embedding(self.layers(x)))
