"""Shared logic for the in-memory data modules: stratified splits, datasets and loaders."""
from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

SPLITS = ("train", "val", "test")


class IndexedDataset(Dataset):
    """Wrap a dataset so every sample also carries its index: ``(*sample, index)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation that is a pure function of ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch, so a run resumed from a checkpoint sees
    exactly the order an uninterrupted run would have seen.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def check_transfer_size(transfer_size: int | None) -> int | None:
    """None (no transfer set) or a positive size."""
    if transfer_size is not None and transfer_size <= 0:
        raise ValueError(f"transfer_size must be a positive number of samples (or null for none), got {transfer_size}")
    return transfer_size


def stratified_split(labels: np.ndarray | Tensor, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``len(fractions) + 1`` disjoint, stratified index arrays.

    Part ``i`` (``i < len(fractions)``) holds ``round(fractions[i] * n)`` indices; the last part
    holds the rest. Every class is spread evenly over the parts (each part's per-class count is
    within one of its proportional share). Deterministic for a given ``seed``; each part is sorted.
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    counts = [int(round(f * n)) for f in fractions]
    if any(f < 0 for f in fractions) or sum(counts) >= n:
        raise ValueError(f"fractions {list(fractions)} leave no samples for the remaining part (n={n})")
    rng = np.random.default_rng(seed)
    # Give each sample a key in (0, 1): its random rank within its class, scaled by the class size.
    # Sorting by that key interleaves the classes evenly, so every contiguous chunk is stratified.
    key = np.empty(n, dtype=np.float64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        key[idx] = (rng.permutation(len(idx)) + 0.5) / len(idx)
    order = np.lexsort((rng.random(n), key))  # primary: key; ties broken at random
    parts, start = [], 0
    for k in counts:
        parts.append(np.sort(order[start : start + k]))
        start += k
    parts.append(np.sort(order[start:]))
    return parts


class ArrayDataModule(L.LightningDataModule):
    """Base for data modules whose splits fit in memory as tensors.

    Subclasses set ``num_classes``, ``input_shape``, ``class_names`` (and ``feature_names`` for
    tabular data) in ``__init__`` and implement :meth:`_load_splits`, returning
    ``{"train": (x, y), "val": (x, y), "test": (x, y)}``. Inputs are float32 (or whatever
    :meth:`_to_float` turns into float32), labels int64. Splits are built once and cached, so
    calling :meth:`setup` again does not regenerate them.

    ``val_fraction == 0`` means "no separate validation split": validation uses the test split.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    feature_names: list[str] | None = None
    augmented: bool = False
    #: set by ``DistillationModule(teacher_cache=...)``: training batches become ``(x, y, index)``
    return_index: bool = False

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, val_fraction: float = 0.15) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.feature_names = None
        self.augmented = False
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self._datasets: dict[str, Dataset] = {}
        #: indices of each split into the source arrays (filled by ``_load_splits``)
        self.split_indices: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- subclass hooks
    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Return ``{"train": (x, y), "val": (x, y), "test": (x, y)}``."""
        raise NotImplementedError

    def _make_dataset(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        """Dataset for one split; the default is a plain :class:`TensorDataset`."""
        return TensorDataset(x, y)

    def _to_float(self, x: Tensor) -> Tensor:
        """Map stored inputs to the float32 inputs the model sees (identity by default)."""
        return x.float()

    def _split_full(self, x: Tensor, y: Tensor, test_fraction: float) -> dict[str, tuple[Tensor, Tensor]]:
        """Stratified train/val/test split of one pool; ``val_fraction``/``test_fraction`` are
        fractions of the whole pool. With ``val_fraction == 0`` validation reuses the test split."""
        test_idx, val_idx, train_idx = stratified_split(y, [test_fraction, self.val_fraction], self.seed)
        if self.val_fraction == 0:
            val_idx = test_idx
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        return {name: (x[torch.from_numpy(idx)], y[torch.from_numpy(idx)]) for name, idx in self.split_indices.items()}

    # ----------------------------------------------------------------- Lightning API
    def setup(self, stage: str | None = None) -> None:
        """Build (once) and cache the splits and their datasets."""
        splits = self._ensure_splits()
        if not self._datasets:
            self._datasets = {name: self._make_dataset(name, *splits[name]) for name in SPLITS}

    def _ensure_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._splits is None:
            splits = self._load_splits()
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise RuntimeError(f"{type(self).__name__}._load_splits returned no {missing} split")
            self._splits = splits
        return self._splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        dataset = self._datasets[split]
        if split == "train" and self.return_index:
            dataset = IndexedDataset(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=_loader_generator(self.seed),
        )

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        """Shuffled training loader (order a function of ``seed`` and the epoch).

        With a transfer set (:meth:`transfer_dataset`), ``{"labeled": ..., "transfer": ...}``:
        Lightning cycles the shorter stream, so every step sees one batch of each.
        """
        labeled = self._loader("train", shuffle=True)
        transfer = self.transfer_dataset()
        if transfer is None:
            return labeled
        loader = DataLoader(
            transfer,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(transfer), self.seed + 1),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=_loader_generator(self.seed + 1),
        )
        return {"labeled": labeled, "transfer": loader}

    def transfer_dataset(self) -> Dataset | None:
        """Unlabeled inputs ``(x,)`` for the teacher-matching terms; None when there are none."""
        return None

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ----------------------------------------------------------------- helpers for models/metrics
    def split_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """``(inputs, labels)`` of a split as float32 / int64 tensors, unaugmented."""
        x, y = self._ensure_splits()[split]
        return self._to_float(x), y

    def example_input(self, n: int = 2) -> Tensor:
        """The first ``n`` training inputs (real, unaugmented samples), shape ``[n, *input_shape]``."""
        x, _ = self._ensure_splits()["train"]
        return self._to_float(x[:n])

    def train_inputs(self) -> Tensor:
        """All training inputs as one float32 tensor (e.g. for a training-mean attribution baseline)."""
        return self.split_tensors("train")[0]

    def split_sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {name: len(y) for name, (_, y) in self._ensure_splits().items()}


def _loader_generator(seed: int) -> torch.Generator:
    """The loader's own generator: a DataLoader draws its workers' base seed each time it is
    iterated, from the global RNG when it has none. With its own, iterating loaders (validation
    every epoch, the loader made before a resumed fit) leaves the global RNG, and so dropout, alone."""
    return torch.Generator().manual_seed(seed)
