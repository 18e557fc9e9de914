"""Token sequences ``[T]``: each position is a feature; padding is never a feature.

Text models in kdlight take token ids ``[N, T]`` (int64) and know their padding id
(``pad_token_id``): they build the attention mask themselves, so every caller (the distillation
step, the teacher cache, Captum, the figures) calls ``model(ids)`` as for any other input. The
batch may carry ``attention_mask``; kdlight checks that it is ``ids != pad_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor

from kdlight.core.modality.base import Modality, check_patch_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Text"]


@dataclass(frozen=True)
class Text(Modality):
    """Token ids ``[N, T]`` of a vocabulary of ``vocab_size`` tokens, padded with ``pad_id``.

    * ``reference_id`` (default ``pad_id``): the token that "removes" a token: the baseline
      sequence of gradient methods (layer attributions on the embeddings), what occlusion,
      KernelShap / LIME and deletion / insertion put in place of a token. Replaced by the padding
      id, a token is masked out of attention; replaced by an UNK id, it stays a position.
    * ``tokens``: the vocabulary (id -> string), for figures; ``None`` shows ids.
    * ``max_length``: the longest sequence the data yields (``None``: unchecked); teacher and
      student must accept it.
    * Feature groups, deletion / insertion steps and occlusion windows: one token each, or
      ``patch_size`` consecutive tokens. Padded positions are never scored (see :meth:`valid`).
    * No spatial positions, so no Grad-CAM.
    * Figures: each sentence with its tokens shaded by the teacher's and the student's maps, one
      row per model, as PNG (:meth:`explanation_image`) and HTML (:meth:`explanation_html`); see
      :mod:`kdlight.core.modality.text_drawing`.
    """

    vocab_size: int
    pad_id: int = 0
    reference_id: int | None = None
    tokens: tuple[str, ...] | None = None
    max_length: int | None = None

    name: ClassVar[str] = "text"
    sample_rank: ClassVar[int] = 1
    layout: ClassVar[str] = "[T]"
    cell_size: ClassVar[tuple[float, float]] = (9.0, 0.5)

    def __post_init__(self) -> None:
        for field_name in ("vocab_size", "pad_id"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Text {field_name} must be an integer >= 0, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"Text vocab_size must be >= 2 (padding and one token), got {self.vocab_size}")
        reference = self.pad_id if self.reference_id is None else self.reference_id
        for field_name, value in (("pad_id", self.pad_id), ("reference_id", reference)):
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"Text {field_name}={value} is outside the vocabulary [0, {self.vocab_size})")
        object.__setattr__(self, "reference_id", reference)
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
            if len(self.tokens) != self.vocab_size:
                raise ValueError(f"Text tokens lists {len(self.tokens)} tokens for vocab_size={self.vocab_size}")

    # -- shapes and ids ---------------------------------------------------------------------------
    def check(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().check(shape)
        if self.max_length is not None and shape[1] > self.max_length:
            raise ValueError(f"text inputs are {shape[1]} tokens long but max_length is {self.max_length}")

    def check_ids(self, inputs: Tensor, attention_mask: Tensor | None = None) -> None:
        """Refuse inputs that are not token ids of this vocabulary, and an ``attention_mask`` that
        disagrees with the padding (one line each)."""
        self.check(inputs.shape)
        if inputs.is_floating_point() or inputs.dtype == torch.bool:
            raise ValueError(f"text inputs must be integer token ids, got dtype {inputs.dtype}")
        if inputs.numel():
            low, high = int(inputs.min()), int(inputs.max())
            if low < 0 or high >= self.vocab_size:
                bad = high if high >= self.vocab_size else low
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.vocab_size}); the tokenizer and "
                    f"the models' vocab_size must match"
                )
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(inputs.shape):
                raise ValueError(
                    f"attention_mask has shape {list(attention_mask.shape)} but the token ids {list(inputs.shape)}"
                )
            if not torch.equal(attention_mask.bool(), self.valid(inputs)):
                raise ValueError(
                    f"attention_mask disagrees with the padding (id {self.pad_id}): kdlight's text models mask the "
                    f"positions whose id is pad_id; pad with pad_id={self.pad_id} exactly where the mask is 0"
                )

    def valid(self, inputs: Tensor) -> Tensor:
        """``[N, T]`` True at real tokens (not padding)."""
        return inputs != self.pad_id

    def num_features(self, sample_shape: tuple[int, ...]) -> int:
        return sample_shape[0]

    # -- features and perturbations ---------------------------------------------------------------
    def feature_mask(self, inputs: Tensor, patch_size: int | None = None) -> Tensor:
        """``[1, T]``: each token its own feature, or ``patch_size`` consecutive tokens one."""
        check_patch_size(patch_size)
        self.check(inputs.shape)
        return (torch.arange(inputs.shape[1], device=inputs.device) // (patch_size or 1)).view(1, -1)

    def occlusion_window(
        self, sample_shape: tuple[int, ...], patch_size: int | None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        check_patch_size(patch_size)
        p = patch_size or 1
        return (p,), (p,)

    def position_scores(self, maps: Tensor) -> Tensor:
        return maps.flatten(1)

    def position_mask(self, moved: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
        return moved.view(-1, *sample_shape)

    def reference(self, inputs: Tensor) -> Tensor:
        """``[1, T]`` of ``reference_id`` (int64 on ``inputs``' device)."""
        with torch.inference_mode(False):
            return torch.full((1, *inputs.shape[1:]), self.reference_id, dtype=inputs.dtype, device=inputs.device)

    def replace(self, inputs: Tensor, removed: Tensor) -> Tensor:
        """``inputs`` with the ``removed`` positions (bool, broadcastable) set to ``reference_id``;
        padding stays padding."""
        removed = removed & self.valid(inputs)
        return torch.where(removed, torch.full_like(inputs, self.reference_id), inputs)

    # -- words ---------------------------------------------------------------------------------
    def decode(self, ids: Tensor | list[int]) -> list[str]:
        """The token strings of one sequence's real (unpadded) positions."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids) if int(i) != self.pad_id]
        return [self.tokens[i] if self.tokens is not None else str(i) for i in ids]

    # -- figures -------------------------------------------------------------------------------
    def _drawn(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer ids ``[N, T]`` and their real-token mask, for drawing."""
        ids = np.asarray(x).astype(np.int64)
        return ids, ids != self.pad_id

    def explanation_image(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> np.ndarray:
        """Each probe's sentence, its tokens shaded by the teacher's (row 1) and the student's
        (row 2) map: an RGB array ``[H, W, 3]`` (uint8) drawn with Pillow; padding is not drawn."""
        from kdlight.core.modality.text_drawing import token_image

        ids, valid = self._drawn(x)
        return token_image(ids, np.asarray(t), np.asarray(s), valid, self.decode, labels, title)

    def explanation_figure(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> Figure:
        """The picture of :meth:`explanation_image` in one axes, axis off."""
        from kdlight.core.modality.image import _raster_figure

        return _raster_figure(self.explanation_image(x, t, s, labels, title))

    def explanation_html(
        self, x: np.ndarray, t: np.ndarray, s: np.ndarray, labels: list[str] | None, title: str
    ) -> str:
        """The figure as a self-contained HTML string: one ``<span>`` per real token, shaded, with
        ``title="<role>: <value>"``; tokens HTML-escaped."""
        from kdlight.core.modality.text_drawing import token_html

        ids, valid = self._drawn(x)
        return token_html(ids, np.asarray(t), np.asarray(s), valid, self.decode, labels, title)
