"""MNIST-1D (Greydanus & Kobak), generated locally with the ``mnist1d`` package (never downloaded)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor

from kdlight.data.base import ArrayDataModule, stratified_split

# (data_seed, num_samples, train_split) -> {"x", "y", "x_test", "y_test"} numpy arrays
_MNIST1D_CACHE: dict[tuple[int, int, float], dict[str, np.ndarray]] = {}


def generate_mnist1d(data_seed: int = 42, num_samples: int = 5000, train_split: float = 0.8) -> dict[str, np.ndarray]:
    """MNIST-1D arrays from ``mnist1d.data.make_dataset`` with the package's default arguments
    except ``seed``/``num_samples``/``train_split``. Cached per process; the global ``random`` /
    ``numpy.random`` states (which mnist1d reseeds) are restored afterwards. Do not mutate the result.
    """
    key = (int(data_seed), int(num_samples), float(train_split))
    if key not in _MNIST1D_CACHE:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed, args.num_samples, args.train_split = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            data = make_dataset(args)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        _MNIST1D_CACHE[key] = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
    return _MNIST1D_CACHE[key]


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D as ``[1, 40]`` float32 sequences (channels first), 10 classes.

    The defaults reproduce the standard dataset: 5000 samples generated with mnist1d's
    ``get_dataset_args()`` (``data_seed=42``), the first 4000 (``train_split=0.8``) for training
    and the official 1000 as the test set. ``val_fraction`` of the 4000 training samples is carved
    out (stratified, from ``seed``) for validation; ``val_fraction=0`` validates on the test set.
    Inputs are used as mnist1d returns them (it already centres the whole dataset and scales it to
    unit std); no further standardization is applied.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        data_seed: int = 42,
        num_samples: int = 5000,
        train_split: float = 0.8,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, val_fraction=val_fraction)
        if not 0.0 < train_split < 1.0:
            raise ValueError(f"train_split must be in (0, 1), got {train_split}")
        self.data_seed = data_seed
        self.num_samples = num_samples
        self.train_split = train_split
        self.num_classes = 10
        self.input_shape = (1, 40)
        self.class_names = [str(d) for d in range(10)]

    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        data = generate_mnist1d(self.data_seed, self.num_samples, self.train_split)
        x = torch.from_numpy(data["x"].astype(np.float32)).unsqueeze(1)
        y = torch.from_numpy(data["y"].astype(np.int64))
        x_test = torch.from_numpy(data["x_test"].astype(np.float32)).unsqueeze(1)
        y_test = torch.from_numpy(data["y_test"].astype(np.int64))
        val_idx, train_idx = stratified_split(y, [self.val_fraction], self.seed)
        test_idx = np.arange(len(y_test))
        # train/val index the mnist1d "x"/"y" arrays, test indexes "x_test"/"y_test"
        self.split_indices = {"train": train_idx, "val": val_idx if self.val_fraction > 0 else test_idx, "test": test_idx}
        tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        splits = {"train": (x[tr], y[tr]), "test": (x_test, y_test)}
        splits["val"] = (x[va], y[va]) if self.val_fraction > 0 else splits["test"]
        return splits
