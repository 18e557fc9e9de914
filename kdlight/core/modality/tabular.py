"""Tabular rows ``[F]``: each column is a feature; drawn as bars of the strongest features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

from kdlight.core.modality.base import Modality, check_patch_size, row_limit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Tabular", "TOP_FEATURES"]

#: features shown per row of a figure
TOP_FEATURES = 10


@dataclass(frozen=True)
class Tabular(Modality):
    """Feature vectors ``[N, F]``, optionally with ``feature_names`` (default ``x0, x1, ...``).

    * Feature groups, deletion / insertion steps and occlusion windows: one column each
      (``patch_size`` does not apply).
    * No spatial positions, so no Grad-CAM.
    * Figures: horizontal bars for the ``TOP_FEATURES`` features with the largest
      ``max(|t| / max|t|, |s| / max|s|)`` (the same features, in that order, in all three columns;
      the input column shows their values).
    """

    feature_names: tuple[str, ...] | None = None

    name: ClassVar[str] = "tabular"
    sample_rank: ClassVar[int] = 1
    layout: ClassVar[str] = "[F]"
    cell_size: ClassVar[tuple[float, float]] = (3.6, 2.6)

    def __post_init__(self) -> None:
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(str(n) for n in self.feature_names))

    def check(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().check(shape)
        if self.feature_names is not None and len(self.feature_names) != shape[1]:
            raise ValueError(f"feature_names has {len(self.feature_names)} names for {shape[1]} features")

    def feature_mask(self, inputs: Tensor, patch_size: int | None = None) -> Tensor:
        """``[1, F]``: each column its own feature (``patch_size`` ignored)."""
        check_patch_size(patch_size)
        self.check(inputs.shape)
        return torch.arange(inputs.shape[1], device=inputs.device).view(1, -1)

    def occlusion_window(
        self, sample_shape: tuple[int, ...], patch_size: int | None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        check_patch_size(patch_size)
        return (1,), (1,)

    def position_scores(self, maps: Tensor) -> Tensor:
        return maps

    def position_mask(self, moved: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
        return moved.view(-1, *sample_shape)

    def names(self, num_features: int) -> list[str]:
        """The feature names, or ``x0, x1, ...``."""
        return list(self.feature_names) if self.feature_names is not None else [f"x{j}" for j in range(num_features)]

    def draw_row(self, axes: list[Axes], x: np.ndarray, t: np.ndarray, s: np.ndarray) -> None:
        names = self.names(x.shape[0])
        top = _top_features(t, s, TOP_FEATURES)
        m = row_limit(t[top], s[top])
        pos = np.arange(len(top))
        axes[0].barh(pos, x[top], color="0.5")
        for ax, a in zip(axes[1:], (t, s)):
            values = a[top]
            ax.barh(pos, values, color=np.where(values >= 0, "tab:red", "tab:blue"))
            ax.set_xlim(-1.05 * m, 1.05 * m)
            ax.axvline(0.0, color="black", linewidth=0.6)
        for col, ax in enumerate(axes):
            ax.set_yticks(pos)
            ax.set_yticklabels([names[j] for j in top] if col == 0 else [], fontsize=7)
            ax.invert_yaxis()
            ax.tick_params(axis="x", labelsize=7)


def _top_features(t: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features with the largest scale-free magnitude in either map."""
    scale = lambda a: np.abs(a) / (np.nanmax(np.abs(a), initial=0.0) or 1.0)  # noqa: E731
    score = np.nan_to_num(np.maximum(scale(t), scale(s)), nan=0.0)
    return np.argsort(-score, kind="stable")[:k]
