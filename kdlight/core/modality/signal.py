"""1-D signals ``[C, L]``: contiguous segments shared across channels; drawn as lines over a band."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

from kdlight.core.modality.base import CMAP, MAX_FEATURES_WITHOUT_PATCHES, ChannelsFirst, check_patch_size, row_limit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Signal"]


@dataclass(frozen=True)
class Signal(ChannelsFirst):
    """1-D signals ``[N, C, L]``.

    * Feature groups: contiguous segments of ``patch_size`` time steps shared across channels
      (``None``: each step, allowed up to ``MAX_FEATURES_WITHOUT_PATCHES`` steps).
    * Grad-CAM maps are resized linearly.
    * Figures: each cell draws the input (one line per channel); the teacher / student cells add
      the channel-summed map as a coloured band behind the lines, both on the row's shared scale.
    """

    name: ClassVar[str] = "signal"
    sample_rank: ClassVar[int] = 2
    layout: ClassVar[str] = "[C, L]"
    interpolation: ClassVar[str | None] = "linear"
    cell_size: ClassVar[tuple[float, float]] = (3.6, 1.8)

    def feature_mask(self, inputs: Tensor, patch_size: int | None = None) -> Tensor:
        """``[1, 1, L]`` segment indices."""
        check_patch_size(patch_size)
        self.check(inputs.shape)
        length = inputs.shape[2]
        if patch_size is None:
            if length > MAX_FEATURES_WITHOUT_PATCHES:
                raise ValueError(
                    f"a 1-D input of length {length} has more than {MAX_FEATURES_WITHOUT_PATCHES} "
                    f"positions: set patch_size (e.g. AttributionConfig(patch_size=...)) to group "
                    f"them into segments"
                )
            patch_size = 1
        if patch_size > length:
            raise ValueError(f"patch_size={patch_size} exceeds the input length {length}")
        return (torch.arange(length, device=inputs.device) // patch_size).view(1, 1, length)

    def draw_row(self, axes: list[Axes], x: np.ndarray, t: np.ndarray, s: np.ndarray) -> None:
        t, s = t.sum(0), s.sum(0)
        m = row_limit(t, s)
        steps = np.arange(x.shape[1])
        lo, hi = float(x.min()), float(x.max())
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        for col, ax in enumerate(axes):
            if col > 0:
                band = (t, s)[col - 1][None, :]
                extent = (-0.5, x.shape[1] - 0.5, lo - pad, hi + pad)
                ax.imshow(band, cmap=CMAP, vmin=-m, vmax=m, aspect="auto", extent=extent, alpha=0.8)
            for channel in x:
                ax.plot(steps, channel, color="black" if col else None, linewidth=0.9)
            ax.set_xlim(-0.5, x.shape[1] - 0.5)
            ax.set_ylim(lo - pad, hi + pad)
