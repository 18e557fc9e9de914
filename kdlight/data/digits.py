"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlight.core.modality import Image
from kdlight.data.base import ArrayDataModule, check_transfer_size

AUGMENTATIONS = ("shift", "noise", "mixup")


class AugmentedViews(Dataset):
    """``size`` unlabeled views ``(x,)`` of the training images: random 1-pixel shifts, Gaussian
    noise and mixup with another training image. View ``i`` is a pure function of ``(seed, i)``."""

    def __init__(self, images: Tensor, size: int, augmentations: list[str], seed: int) -> None:
        unknown = [a for a in augmentations if a not in AUGMENTATIONS]
        if unknown or not augmentations:
            raise ValueError(f"unknown transfer augmentation(s) {unknown}; valid ones are: {', '.join(AUGMENTATIONS)}")
        self.images, self.size, self.augmentations, self.seed = images, size, list(augmentations), seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        n = len(self.images)
        x = self.images[int(torch.randint(n, (), generator=g))]
        if "mixup" in self.augmentations:
            lam = float(torch.rand((), generator=g))
            x = lam * x + (1 - lam) * self.images[int(torch.randint(n, (), generator=g))]
        if "shift" in self.augmentations:
            dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
            if dy:
                x[:, 0 if dy > 0 else -1, :] = 0
            if dx:
                x[:, :, 0 if dx > 0 else -1] = 0
        if "noise" in self.augmentations:
            x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return (x,)


class DigitsDataModule(ArrayDataModule):
    """``sklearn.datasets.load_digits`` as ``[1, 8, 8]`` float32 images scaled to ``[0, 1]`` (pixel / 16).

    Stratified train/val/test split of the 1797 images from ``seed``; ``val_fraction`` and
    ``test_fraction`` are fractions of all images (defaults give 1167 / 270 / 360).
    ``val_fraction=0`` validates on the test split.

    No extra digits exist, so ``transfer_size`` makes an unlabeled transfer set of augmented views
    of the training images (``transfer_augmentations``: shift, noise, mixup).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        transfer_size: int | None = None,
        transfer_augmentations: list[str] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, val_fraction=val_fraction)
        if not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"need 0 < test_fraction and val_fraction + test_fraction < 1, got {val_fraction}, {test_fraction}"
            )
        self.test_fraction = test_fraction
        self.transfer_size = check_transfer_size(transfer_size)
        self.transfer_augmentations = list(transfer_augmentations or AUGMENTATIONS)
        self.num_classes = 10
        self.input_shape = (1, 8, 8)
        self.modality = Image()
        self.class_names = [str(d) for d in range(10)]

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
        y = torch.from_numpy(data.target.astype(np.int64))
        return self._split_full(x, y, self.test_fraction)

    def transfer_dataset(self) -> Dataset | None:
        if self.transfer_size is None:
            return None
        return AugmentedViews(self.train_inputs(), self.transfer_size, self.transfer_augmentations, self.seed)
