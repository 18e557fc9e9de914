"""scikit-learn's bundled Wisconsin breast-cancer table (569 samples, 30 features, 2 classes)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kdlight.core.modality import Tabular
from kdlight.data.base import ArrayDataModule


class BreastCancerDataModule(ArrayDataModule):
    """``sklearn.datasets.load_breast_cancer`` as ``[30]`` float32 feature vectors.

    Features are standardized with the mean / std (population std) of the TRAIN split only, so
    no statistics leak from val/test; the statistics are kept in ``feature_mean`` /
    ``feature_std`` after setup. Labels follow sklearn: 0 = malignant, 1 = benign.
    Stratified split from ``seed``; fractions are of all samples. ``val_fraction=0`` validates on
    the test split.
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
            raise ValueError(
                f"need 0 < test_fraction and val_fraction + test_fraction < 1, got {val_fraction}, {test_fraction}"
            )
        from sklearn.datasets import load_breast_cancer

        self.test_fraction = test_fraction
        self._raw = load_breast_cancer()  # bundled CSV, milliseconds
        self.num_classes = 2
        self.input_shape = (30,)
        self.class_names = [str(n) for n in self._raw.target_names]  # ['malignant', 'benign']
        self.feature_names = [str(n) for n in self._raw.feature_names]
        self.modality = Tabular(feature_names=self.feature_names)
        self.feature_mean: Tensor | None = None
        self.feature_std: Tensor | None = None

    def _source_inputs(self, split: str) -> np.ndarray:
        """The raw (unstandardized) features: the standardization depends on the training split."""
        self._ensure_splits()
        return self._raw.data[self.split_indices[split]]

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        x = torch.from_numpy(self._raw.data.astype(np.float32))
        y = torch.from_numpy(self._raw.target.astype(np.int64))
        splits = self._split_full(x, y, self.test_fraction)
        x_train = splits["train"][0]
        mean = x_train.mean(dim=0)
        std = x_train.std(dim=0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.feature_mean, self.feature_std = mean, std
        return {name: ((xs - mean) / std, ys) for name, (xs, ys) in splits.items()}
