"""Digits with a spurious cue: a shortcut benchmark for distillation and explanation matching.

Every training (and validation) image of :class:`ShortcutDigitsDataModule` carries a bright pixel
at a class-dependent position in a fixed *cue region* of the 8x8 image, so the label can be read
off one pixel. In the test split the cue is still there but its position is drawn at random,
independent of the label: a model that learnt the shortcut loses accuracy there, a model that
reads the digit does not. With ``clean=True`` no split has a cue (train the teacher on that).

Cue regions (pixels that sklearn's digits almost never use, so the cue rarely hides a stroke):

* ``"sides"`` (default): the 16 pixels of the left and right columns (column 0 is exactly zero
  in all 1797 images, column 7 has a mean intensity below 0.03).
* ``"border"``: the 28 pixels of the outer frame (rows 0 and 7 do carry strokes).

The region's pixels are ordered (``sides``: column 0 top to bottom, then column 7; ``border``:
clockwise from the top-left corner) and class ``c`` owns pixel ``floor((c + 0.5) * n / K)`` of
the ``n`` region pixels (``K`` classes). For ``sides`` that is rows 0, 2, 4, 5, 7 of column 0
for classes 0-4 and the same rows of column 7 for classes 5-9.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kdlight.data.digits import DigitsDataModule

CUE_REGIONS = ("sides", "border")
TEST_CUES = ("random", "none")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def region_pixels(region: str, size: int = 8) -> list[tuple[int, int]]:
    """The ``(row, col)`` pixels of a cue region, in the order class positions are assigned."""
    if region == "sides":
        return [(r, 0) for r in range(size)] + [(r, size - 1) for r in range(size)]
    if region == "border":
        top = [(0, c) for c in range(size)]
        right = [(r, size - 1) for r in range(1, size)]
        bottom = [(size - 1, c) for c in range(size - 2, -1, -1)]
        left = [(r, 0) for r in range(size - 2, 0, -1)]
        return top + right + bottom + left
    raise ValueError(f"unknown cue_region {region!r}; valid regions are: {', '.join(CUE_REGIONS)}")


class ShortcutDigitsDataModule(DigitsDataModule):
    """sklearn digits (``[1, 8, 8]`` in ``[0, 1]``) with a class-encoding cue pixel.

    Args:
        cue_strength: probability that a training / validation image's cue marks its own class
            (otherwise it marks a uniformly random class). 1.0 = the cue predicts the label
            perfectly; 0.0 = the cue is noise in every split.
        cue_value: intensity written into the cue pixel (the inputs are in ``[0, 1]``).
        cue_region: ``"sides"`` or ``"border"`` (see the module docstring).
        clean: no cue in any split (for the teacher).
        test_cue: ``"random"`` (cue at a uniformly random class position, independent of the
            label) or ``"none"`` (unmodified test images).
        batch_size, num_workers, seed, val_fraction, test_fraction: as :class:`DigitsDataModule`;
            the split and every cue draw are deterministic given ``seed``.

    After ``setup`` the class of the cue written into each image is in ``cue_classes[split]``
    (``-1`` where there is none).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        cue_strength: float = 1.0,
        cue_value: float = 1.0,
        cue_region: str = "sides",
        clean: bool = False,
        test_cue: str = "random",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        )
        if not 0.0 <= cue_strength <= 1.0:
            raise ValueError(f"cue_strength must be in [0, 1], got {cue_strength}")
        if not 0.0 < cue_value <= 1.0:
            raise ValueError(f"cue_value must be in (0, 1], got {cue_value}")
        self.cue_pixels_all = region_pixels(cue_region)  # validates the name
        if test_cue not in TEST_CUES:
            raise ValueError(f"unknown test_cue {test_cue!r}; valid values are: {', '.join(TEST_CUES)}")
        if len(self.cue_pixels_all) < self.num_classes:
            raise ValueError(f"cue_region {cue_region!r} has fewer pixels than classes")
        self.cue_strength = float(cue_strength)
        self.cue_value = float(cue_value)
        self.cue_region = cue_region
        self.clean = bool(clean)
        self.test_cue = test_cue
        self.cue_classes: dict[str, np.ndarray] = {}
        self._clean_inputs: dict[str, Tensor] = {}

    # ----------------------------------------------------------------- cue geometry
    def cue_position(self, cls: int) -> tuple[int, int]:
        """``(row, col)`` of the cue pixel that encodes class ``cls``."""
        n, k = len(self.cue_pixels_all), self.num_classes
        if not 0 <= cls < k:
            raise ValueError(f"class must be in [0, {k}), got {cls}")
        return self.cue_pixels_all[int((cls + 0.5) * n / k)]

    def cue_mask(self) -> Tensor:
        """Boolean mask ``[1, 8, 8]`` of the whole cue region (every pixel a cue may occupy)."""
        mask = torch.zeros(self.input_shape, dtype=torch.bool)
        for r, c in self.cue_pixels_all:
            mask[0, r, c] = True
        return mask

    def class_cue_mask(self, cls: int) -> Tensor:
        """Boolean mask ``[1, 8, 8]`` of the single pixel that encodes class ``cls``."""
        mask = torch.zeros(self.input_shape, dtype=torch.bool)
        r, c = self.cue_position(cls)
        mask[0, r, c] = True
        return mask

    def ground_truth_masks(self, split: str, indices: Tensor | list[int]) -> Tensor:
        """The ground-truth relevant features of samples ``indices`` (rows of ``split_tensors(split)``):
        boolean masks ``[N, 1, 8, 8]`` of the pixel holding each image's cue (all False where an image
        has none), for localisation metrics."""
        self._ensure_splits()
        if split not in self.cue_classes:
            raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(self.cue_classes)}")
        cues = self.cue_classes[split][torch.as_tensor(indices, dtype=torch.long).cpu().numpy()]
        return self.apply_cue(torch.zeros((len(cues), *self.input_shape)), cues) != 0

    def apply_cue(self, x: Tensor, cue_classes: np.ndarray | Tensor) -> Tensor:
        """A copy of ``x`` ``[N, 1, 8, 8]`` with the cue of ``cue_classes[i]`` written into image ``i``
        (``-1``: no cue)."""
        out = x.clone()
        cls = torch.as_tensor(np.asarray(cue_classes), dtype=torch.long)
        if cls.shape != (x.shape[0],):
            raise ValueError(f"need one cue class per image, got {tuple(cls.shape)} for {x.shape[0]} images")
        positions = torch.tensor([self.cue_position(c) for c in range(self.num_classes)], dtype=torch.long)
        keep = cls >= 0
        rows, cols = positions[cls[keep], 0], positions[cls[keep], 1]
        out[keep.nonzero(as_tuple=True)[0], 0, rows, cols] = self.cue_value
        return out

    def _draw_cue_classes(self, split: str, y: Tensor) -> np.ndarray:
        n = len(y)
        if self.clean or (split == "test" and self.test_cue == "none"):
            return np.full(n, -1, dtype=np.int64)
        rng = np.random.default_rng([int(self.seed), _SPLIT_CODES[split], 0x5C0C])
        random_classes = rng.integers(0, self.num_classes, size=n)
        if split == "test":
            return random_classes.astype(np.int64)
        faithful = rng.random(n) < self.cue_strength
        return np.where(faithful, y.numpy(), random_classes).astype(np.int64)

    # ----------------------------------------------------------------- data
    def _source_inputs(self, split: str) -> Tensor:
        """The images without their cue: the cue depends on the seed and the split."""
        self._ensure_splits()
        return self._clean_inputs[split]

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        splits = super()._load_splits()
        self._clean_inputs = {split: x for split, (x, _) in splits.items()}
        out = {}
        for split, (x, y) in splits.items():
            if split == "val" and self.val_fraction == 0:
                # validation reuses the test split (and therefore its random cue)
                continue
            cues = self._draw_cue_classes(split, y)
            self.cue_classes[split] = cues
            out[split] = (self.apply_cue(x, cues), y)
        if "val" not in out:
            out["val"] = out["test"]
            self.cue_classes["val"] = self.cue_classes["test"]
        return out
