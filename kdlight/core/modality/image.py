"""Images ``[C, H, W]``: square patches shared across channels; drawn as one RGB mosaic."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

from kdlight.core.modality.base import (
    CMAP,
    COLUMNS,
    MAX_FEATURES_WITHOUT_PATCHES,
    ChannelsFirst,
    check_patch_size,
    row_limit,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Image"]


@dataclass(frozen=True)
class Image(ChannelsFirst):
    """Images ``[N, C, H, W]``.

    * Feature groups: ``patch_size`` x ``patch_size`` squares shared across channels (``None``:
      each pixel, allowed up to ``MAX_FEATURES_WITHOUT_PATCHES`` pixels); a size that does not
      divide the image leaves smaller patches at the edges.
    * Grad-CAM maps are resized bilinearly.
    * Figures: one RGB mosaic (white gaps between cells) drawn with Pillow, labels and title
      included. Maps are summed over channels and coloured with ``RdBu_r`` on ``[-1, 1]`` after
      dividing each row by the largest ``|value|`` of its teacher and student maps; a 3-channel
      input is shown in colour (min-max scaled per sample), any other channel count as the
      channel mean in gray.
    """

    name: ClassVar[str] = "image"
    sample_rank: ClassVar[int] = 3
    layout: ClassVar[str] = "[C, H, W]"
    interpolation: ClassVar[str | None] = "bilinear"

    def feature_mask(self, inputs: Tensor, patch_size: int | None = None) -> Tensor:
        """``[1, 1, H, W]`` patch indices, row-major."""
        check_patch_size(patch_size)
        self.check(inputs.shape)
        height, width = inputs.shape[2], inputs.shape[3]
        if patch_size is None:
            if height * width > MAX_FEATURES_WITHOUT_PATCHES:
                raise ValueError(
                    f"a {height}x{width} image has more than {MAX_FEATURES_WITHOUT_PATCHES} pixels: "
                    f"set patch_size (e.g. AttributionConfig(patch_size=4)) so perturbation methods "
                    f"use square patches as features"
                )
            patch_size = 1
        if patch_size > min(height, width):
            raise ValueError(f"patch_size={patch_size} exceeds the image size {height}x{width}")
        device = inputs.device
        cols = -(-width // patch_size)
        rows = torch.arange(height, device=device) // patch_size
        columns = torch.arange(width, device=device) // patch_size
        return (rows[:, None] * cols + columns[None, :]).view(1, 1, height, width)

    # -- figures -------------------------------------------------------------------------------
    def explanation_image(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> np.ndarray:
        return _image_mosaic(x, t, s, labels, title)

    def explanation_figure(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> Figure:
        """The mosaic of :meth:`explanation_image` shown in one axes, axis off."""
        return _raster_figure(_image_mosaic(x, t, s, labels, title))


def _to_rgb(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB ``[N, H, W, 3]`` panels: the input (colour or gray) and the two maps, each row of maps
    divided by its shared limit and coloured with ``CMAP`` on ``[-1, 1]``."""
    import matplotlib

    if x.shape[1] == 3:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - lo
        shown = np.transpose((x - lo) / np.where(span > 0, span, 1.0), (0, 2, 3, 1))
    else:
        gray = x.mean(1)
        lo, hi = gray.min(axis=(1, 2), keepdims=True), gray.max(axis=(1, 2), keepdims=True)
        shown = np.repeat(((gray - lo) / np.where(hi > lo, hi - lo, 1.0))[..., None], 3, axis=-1)
    t, s = t.sum(1), s.sum(1)
    limits = np.array([row_limit(ti, si) for ti, si in zip(t, s)], dtype=np.float32)[:, None, None]
    cmap = matplotlib.colormaps[CMAP]
    paint = lambda maps: cmap(np.nan_to_num((maps / limits + 1.0) / 2.0, nan=0.5))[..., :3]  # noqa: E731
    return np.clip(shown, 0.0, 1.0), paint(t), paint(s)


def mosaic(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, int]:
    """Float RGB mosaic in ``[0, 1]``: rows are samples, columns input | teacher | student, white
    gaps of ``gap`` pixels between cells; returns it and ``gap``."""
    panels = _to_rgb(x, t, s)
    n, h, w = panels[0].shape[:3]
    gap = max(1, h // 8)
    out = np.ones((n * (h + gap) - gap, 3 * (w + gap) - gap, 3), dtype=np.float32)
    for i in range(n):
        for j, panel in enumerate(panels):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = panel[i]
    return out, gap


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _image_mosaic(
    x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str, width: int = 500
) -> np.ndarray:
    """The image mosaic drawn with Pillow, with column names, row labels and title: ``[H, W, 3]``."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    grid, gap = mosaic(x, t, s)
    h, w = x.shape[2:]
    font, title_font = _font(13), _font(15)
    left = 8 + (max(round(font.getlength(label)) for label in labels) + 8 if labels else 0)
    top = 24 + (26 if title else 0)  # the column names (and the title) above the mosaic
    scale = (width - left - 8) / grid.shape[1]
    scale = float(int(scale)) if scale >= 1 else scale  # whole pixels when enlarging
    size = (max(1, round(grid.shape[1] * scale)), max(1, round(grid.shape[0] * scale)))
    picture = PILImage.fromarray(np.round(grid * 255).astype(np.uint8))
    picture = picture.resize(size, PILImage.Resampling.NEAREST if scale >= 1 else PILImage.Resampling.BOX)
    canvas = PILImage.new("RGB", (width, top + size[1] + 8), "white")
    canvas.paste(picture, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((width / 2, 8), title, fill="black", font=title_font, anchor="mt")
    for j, name in enumerate(COLUMNS):
        draw.text((left + (j * (w + gap) + w / 2) * scale, top - 5), name, fill="black", font=font, anchor="mb")
    for i, label in enumerate(labels or []):
        draw.text((left - 8, top + (i * (h + gap) + h / 2) * scale), label, fill="black", font=font, anchor="rm")
    return np.asarray(canvas)


def _raster_figure(image: np.ndarray, dpi: int = 100) -> Figure:
    """A figure of exactly ``image``'s pixels at ``dpi``: one axes filling it, axis off (an axes,
    not ``figimage``, so that ``bbox_inches="tight"``, as Jupyter renders, keeps the picture)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(image.shape[1] / dpi, image.shape[0] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    return fig
