"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kdlight.data.base import ArrayDataModule


class DigitsDataModule(ArrayDataModule):
    """``sklearn.datasets.load_digits`` as ``[1, 8, 8]`` float32 images scaled to ``[0, 1]`` (pixel / 16).

    Stratified train/val/test split of the 1797 images from ``seed``; ``val_fraction`` and
    ``test_fraction`` are fractions of all images (defaults give 1167 / 270 / 360).
    ``val_fraction=0`` validates on the test split.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, val_fraction=val_fraction)
        if not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(f"need 0 < test_fraction and val_fraction + test_fraction < 1, got {val_fraction}, {test_fraction}")
        self.test_fraction = test_fraction
        self.num_classes = 10
        self.input_shape = (1, 8, 8)
        self.class_names = [str(d) for d in range(10)]

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
        y = torch.from_numpy(data.target.astype(np.int64))
        return self._split_full(x, y, self.test_fraction)
