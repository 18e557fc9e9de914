"""The Modality contract: what attribution, faithfulness and figures need to know about inputs.

A data module owns one (``datamodule.modality``). Code that has no data module calls
:meth:`Modality.for_inputs`, the one place where a tensor's rank is read.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Modality",
    "ChannelsFirst",
    "MAX_FEATURES_WITHOUT_PATCHES",
    "CMAP",
    "COLUMNS",
    "row_limit",
    "new_figure",
    "figure_to_array",
]

#: Perturbation methods treat each pixel / time step as a feature only up to this many positions;
#: beyond it ``patch_size`` must be set.
MAX_FEATURES_WITHOUT_PATCHES = 256
#: diverging colormap of every map (red = positive evidence)
CMAP = "RdBu_r"
#: the columns of an explanation figure
COLUMNS = ("input", "teacher", "student")


class Modality(ABC):
    """How inputs of one kind are grouped into features, perturbed and drawn.

    Subclasses: :class:`~kdlight.core.modality.Image` (``[C, H, W]``),
    :class:`~kdlight.core.modality.Signal` (``[C, L]``), :class:`~kdlight.core.modality.Tabular`
    (``[F]``). Shapes below are batches: one sample's shape with a leading ``N``.
    """

    #: short name, used by attribution methods to declare what they support
    name: ClassVar[str]
    #: dimensions of one sample (``[C, H, W]`` -> 3)
    sample_rank: ClassVar[int]
    #: the layout of one sample, for messages (``"[C, H, W]"``)
    layout: ClassVar[str]
    #: ``F.interpolate`` mode that resizes a layer map to the input's positions (``None``: no
    #: spatial positions, so no Grad-CAM)
    interpolation: ClassVar[str | None] = None

    # -- shapes ---------------------------------------------------------------------------------
    @staticmethod
    def for_inputs(inputs: Tensor | np.ndarray, feature_names: list[str] | None = None) -> Modality:
        """The modality a batch's rank implies: ``[N, F]`` tabular, ``[N, C, L]`` signal,
        ``[N, C, H, W]`` image. For callers without a data module; the only rank-based guess.
        Integer inputs (token ids) have no default: pass the data module's modality instead.
        ``feature_names`` is used for tabular inputs only."""
        from kdlight.core.modality.image import Image
        from kdlight.core.modality.signal import Signal
        from kdlight.core.modality.tabular import Tabular

        shape = tuple(inputs.shape)
        dtype = inputs.dtype
        floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.floating)
        if not floating:
            raise ValueError(
                f"inputs of dtype {dtype} (token ids?) have no default modality; pass the data module's "
                f"modality (e.g. modality=datamodule.modality)"
            )
        if len(shape) == 2:
            return Tabular(feature_names=feature_names)
        if len(shape) == 3:
            return Signal()
        if len(shape) == 4:
            return Image()
        raise ValueError(f"inputs must be [N, F], [N, C, L] or [N, C, H, W], got shape {shape}")

    def check(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Refuse a batch shape ``[N, ...]`` this modality cannot hold (one line)."""
        if len(shape) != self.sample_rank + 1:
            raise ValueError(f"{self.name} inputs must be [N, {self.layout[1:-1]}], got shape {list(shape)}")

    def num_features(self, sample_shape: tuple[int, ...]) -> int:
        """Values of one attribution map: what agreement metrics rank (their top-k is out of these)."""
        return math.prod(sample_shape)

    # -- features and perturbations ---------------------------------------------------------------
    @abstractmethod
    def feature_mask(self, inputs: Tensor, patch_size: int | None = None) -> Tensor:
        """Feature groups for perturbation methods: a LongTensor broadcastable to ``inputs``."""

    @abstractmethod
    def occlusion_window(
        self, sample_shape: tuple[int, ...], patch_size: int | None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Sliding-window shape and strides of Captum ``Occlusion`` for one sample (the same
        feature groups as :meth:`feature_mask`)."""

    @abstractmethod
    def position_scores(self, maps: Tensor) -> Tensor:
        """One score per position ``[N, P]``: the unit that deletion / insertion moves."""

    @abstractmethod
    def position_mask(self, moved: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
        """Boolean ``[R, P]`` positions -> a mask that broadcasts against ``R`` inputs."""

    def reference(self, inputs: Tensor) -> Tensor:
        """The "nothing here" input ``[1, ...]`` (the ``zeros`` baseline), in ``inputs``' dtype."""
        with torch.inference_mode(False):
            return torch.zeros((1, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)

    def patch_size_hint(self, sample_shape: tuple[int, ...]) -> int | None:
        """The smallest ``patch_size`` whose feature groups stay within
        ``MAX_FEATURES_WITHOUT_PATCHES`` (``None``: patches do not apply)."""
        return None

    # -- figures -------------------------------------------------------------------------------
    #: width, height (inches) of one cell of a figure drawn with axes
    cell_size: ClassVar[tuple[float, float]] = (3.6, 1.8)

    def draw_row(self, axes: list[Axes], x: np.ndarray, t: np.ndarray, s: np.ndarray) -> None:
        """Paint one sample (``x`` without the batch axis) and its two maps into three axes."""
        raise NotImplementedError(f"{type(self).__name__} draws no rows of axes")

    def explanation_figure(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> Figure:
        """One row per sample, columns input | teacher | student, one axes per cell."""
        width, height = self.cell_size
        n = x.shape[0]
        fig = new_figure((3 * width, n * height + (0.4 if title else 0.0)))
        grid = fig.subplots(n, 3, squeeze=False)
        for i in range(n):
            row = list(grid[i])
            self.draw_row(row, x[i], t[i], s[i])
            if labels is not None:
                row[0].set_ylabel(labels[i], fontsize=8)
        for ax, name in zip(grid[0], COLUMNS):
            ax.set_title(name, fontsize=9)
        if title:
            fig.suptitle(title)
        return fig

    def explanation_image(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> np.ndarray:
        """:meth:`explanation_figure` as an RGB array ``[H, W, 3]`` (uint8)."""
        return figure_to_array(self.explanation_figure(x, t, s, labels, title))


# ------------------------------------------------------------------------------------------
# drawing helpers shared by the modalities
# ------------------------------------------------------------------------------------------
def row_limit(teacher: np.ndarray, student: np.ndarray) -> float:
    """Symmetric colour / axis limit shared by one row's two maps."""
    m = float(np.nanmax(np.abs(np.concatenate([teacher.ravel(), student.ravel()])), initial=0.0))
    return m if np.isfinite(m) and m > 0 else 1.0


def new_figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def check_patch_size(patch_size: int | None) -> None:
    """A patch size is ``None`` or an integer >= 1."""
    if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1):
        raise ValueError(f"patch_size must be None or an integer >= 1, got {patch_size!r}")


class ChannelsFirst(Modality):
    """Inputs ``[N, C, *positions]`` whose channels share each position: feature groups, deletion
    steps and Grad-CAM maps are per position, summed or broadcast over channels."""

    def position_scores(self, maps: Tensor) -> Tensor:
        return maps.sum(1).flatten(1)

    def position_mask(self, moved: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
        return moved.view(-1, 1, *sample_shape[1:])

    def occlusion_window(
        self, sample_shape: tuple[int, ...], patch_size: int | None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Windows of ``patch_size`` along every position axis, spanning all channels; the stride
        is the window, so windows are the patches of :meth:`feature_mask` (smaller at the edges)."""
        self.feature_mask(torch.empty((1, *sample_shape), device="meta"), patch_size)  # the same checks
        p = patch_size or 1
        positions = tuple(sample_shape[1:])
        return (sample_shape[0], *(p,) * len(positions)), (1, *(p,) * len(positions))

    def patch_size_hint(self, sample_shape: tuple[int, ...]) -> int | None:
        sizes = sample_shape[1:]
        return next(
            p
            for p in range(1, min(sizes) + 1)
            if math.prod(-(-n // p) for n in sizes) <= MAX_FEATURES_WITHOUT_PATCHES or p == min(sizes)
        )
