"""Shared logic for the in-memory data modules: stratified splits, datasets and named-batch loaders."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kdlight.core.batch import collate
from kdlight.core.datamodule import SPLITS, data_capabilities

#: init arguments that change how data are served, not which samples form the splits
LOADER_ARGS = ("self", "batch_size", "num_workers")


def sample_hashes(inputs: Tensor | np.ndarray) -> Tensor:
    """One 8-byte BLAKE2b hash per sample (row along the first dimension) of its raw bytes, as int64."""
    if isinstance(inputs, Tensor):  # as bytes: numpy has no bfloat16
        rows = inputs.detach().cpu().contiguous().reshape(len(inputs), -1).view(torch.uint8).numpy()
    else:
        rows = np.ascontiguousarray(inputs).reshape(len(inputs), -1).view(np.uint8)
    digests = b"".join(hashlib.blake2b(row, digest_size=8).digest() for row in rows)
    return torch.from_numpy(np.frombuffer(digests, dtype="<i8").copy())


def hashes_fingerprint(hashes: Tensor) -> str:
    """SHA-256 (hex) of a set of sample hashes: the same for the same samples in any order."""
    return hashlib.sha256(hashes.sort().values.numpy().astype("<i8").tobytes()).hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as something ``torch.load(weights_only=True)`` reads back (else its repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def teacher_data_overlap(teacher_records: list[dict[str, Any]], datamodule: Any) -> str | None:
    """Describe how many val/test samples of ``datamodule`` the teacher trained on (None: none).

    ``teacher_records`` are :meth:`ArrayDataModule.data_record` dicts of the data the teacher (and,
    for a distilled teacher, its own teachers) trained on. A val/test sample counts when its hash is
    among the teacher's training hashes but not among this data module's own training samples.
    Data modules that keep no record or no sample hashes cannot be checked (None).
    """
    data = data_capabilities(datamodule)
    own = data.data_record() if teacher_records else None
    evaluation = {split: data.split_hashes(split) for split in ("val", "test")} if own is not None else {}
    if own is None or any(hashes is None for hashes in evaluation.values()):
        return None
    leaked = {split: torch.zeros(len(h), dtype=torch.bool) for split, h in evaluation.items()}
    culprit = None
    for record in teacher_records:
        trained = record.get("train_hashes")
        if not isinstance(trained, Tensor):
            continue
        for split, hashes in evaluation.items():
            hit = torch.isin(hashes, trained) & ~torch.isin(hashes, own["train_hashes"])
            if culprit is None and bool(hit.any()):
                culprit = record
            leaked[split] |= hit
    if culprit is None:
        return None
    eval_all = torch.cat(list(evaluation.values()))
    leaked_all = torch.cat(list(leaked.values()))
    count, total = int(eval_all[leaked_all].unique().numel()), int(eval_all.unique().numel())
    per_split = ", ".join(f"{s} {int(m.sum())} of {len(m)}" for s, m in leaked.items())
    where = f"teacher_checkpoint {culprit['checkpoint']}" if culprit.get("checkpoint") else "the teacher"
    return (
        f"{where} was trained on {count} of the {total} val/test samples of {type(datamodule).__name__} "
        f"({per_split}): {_describe_difference(culprit, own)}"
    )


def _describe_difference(teacher: dict[str, Any], own: dict[str, Any]) -> str:
    """Which data-module class or split-defining arguments differ between two records."""
    short = lambda path: str(path).rsplit(".", 1)[-1]  # noqa: E731
    if teacher.get("class") != own.get("class"):
        return f"the teacher used {short(teacher.get('class'))}, this run {short(own.get('class'))}"
    theirs, ours = teacher.get("args", {}), own.get("args", {})
    names = [n for n in ours if n in theirs and theirs[n] != ours[n]]
    if not names:
        return "its split differs from this run's although the data-module settings are the same"
    fmt = lambda args: ", ".join(f"{n}={args[n]!r}" for n in names)  # noqa: E731
    return f"its split came from {fmt(theirs)}, this run's from {fmt(ours)}"


class IndexedDataset(Dataset):
    """Wrap a dataset so every sample also carries its index: ``(*sample, index)``, or the key
    ``"index"`` added to a dict sample.

    Over a plain :class:`TensorDataset` of ``(inputs, target)`` it also serves whole batches
    (:meth:`__getitems__`, which ``DataLoader`` calls with a batch's indices): one indexing of each
    tensor instead of one sample at a time plus collation, with the same values, dtypes and order.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._tensors = _batch_indexable(dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if isinstance(sample, dict):
            return {**sample, "index": index}
        return (*sample, index)

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor] | list[Any]:
        """A ready named batch ``{"inputs", "target", "index"}`` over tensors, else the samples
        (``collate`` handles both)."""
        if self._tensors is None:
            return [self[i] for i in indices]
        rows = torch.as_tensor(indices, dtype=torch.int64)
        inputs, target = self._tensors
        return {"inputs": inputs.index_select(0, rows), "target": target.index_select(0, rows), "index": rows}


def _batch_indexable(dataset: Dataset) -> tuple[Tensor, Tensor] | None:
    """``(inputs, target)`` of a plain two-tensor :class:`TensorDataset` (not a subclass, which may
    change ``__getitem__``); None for any other dataset."""
    if type(dataset) is TensorDataset and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    return None


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
    ``{"train": (x, y), "val": (x, y), "test": (x, y)}``. Floating-point inputs are served as
    float32 and integer inputs (token ids) as they are (:meth:`_model_inputs`), labels int64.
    Splits are built once and cached, so calling :meth:`setup` again does not regenerate them.

    Loaders yield named batches, ``{"inputs", "target", "index"}`` (``index``: the sample's row in
    ``split_tensors(split)``); read them with :func:`kdlight.core.batch.as_batch`.

    ``val_fraction == 0`` means "no separate validation split": validation uses the test split.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    feature_names: list[str] | None = None
    augmented: bool = False
    #: every batch carries ``index`` (the teacher cache is keyed on it)
    indexed_batches: bool = True

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
        self._split_hashes: dict[str, Tensor] = {}
        self._data_record: dict[str, Any] | None = None

    # ----------------------------------------------------------------- subclass hooks
    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Return ``{"train": (x, y), "val": (x, y), "test": (x, y)}``."""
        raise NotImplementedError

    def _source_inputs(self, split: str) -> Tensor | np.ndarray:
        """A split's samples as stored in the source data, before any split-dependent transform
        (per-split standardization, cues): what identifies a sample across seeds and splits."""
        return self._ensure_splits()[split][0]

    def _make_dataset(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        """Dataset for one split; the default is a plain :class:`TensorDataset`."""
        return TensorDataset(x, y)

    def _model_inputs(self, x: Tensor) -> Tensor:
        """Map stored inputs to the inputs the model sees: floating point as float32, integer
        inputs (token ids) unchanged, never cast to float."""
        return x.float() if x.is_floating_point() else x

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
        dataset = IndexedDataset(self._datasets[split])
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=collate,
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
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=_loader_generator(self.seed + 1),
        )
        return {"labeled": labeled, "transfer": loader}

    def transfer_dataset(self) -> Dataset | None:
        """Unlabeled inputs ``(x,)`` for the teacher-matching terms (their loader yields
        ``{"inputs"}`` batches); None when there are none."""
        return None

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ----------------------------------------------------------------- helpers for models/metrics
    def split_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """``(inputs, labels)`` of a split, unaugmented: inputs as :meth:`_model_inputs` serves
        them (float32, or integer token ids), labels int64."""
        x, y = self._ensure_splits()[split]
        return self._model_inputs(x), y

    def example_input(self, n: int = 2) -> Tensor:
        """The first ``n`` training inputs (real, unaugmented samples), shape ``[n, *input_shape]``."""
        x, _ = self._ensure_splits()["train"]
        return self._model_inputs(x[:n])

    def train_inputs(self) -> Tensor:
        """All training inputs as one tensor, in index order (e.g. for a training-mean attribution baseline)."""
        return self.split_tensors("train")[0]

    def split_sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {name: len(y) for name, (_, y) in self._ensure_splits().items()}

    # ----------------------------------------------------------------- identity, for leakage checks
    def split_hashes(self, split: str) -> Tensor:
        """int64 hashes of each sample of ``split`` (:func:`sample_hashes` of its source inputs), cached."""
        if split not in self._split_hashes:
            self._split_hashes[split] = sample_hashes(self._source_inputs(split))
        return self._split_hashes[split]

    def split_args(self) -> dict[str, Any]:
        """The init arguments that define the data and the splits (all but batch size and workers)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in LOADER_ARGS]
        return {n: _plain(getattr(self, n)) for n in names if hasattr(self, n)}

    def data_record(self) -> dict[str, Any]:
        """What kdlight stores in checkpoints under ``kdlight_data``: the class, the split-defining
        arguments, the split sizes, a SHA-256 fingerprint per split and the sorted int64 hashes of
        the training samples (weights-only loadable: str, int, float, lists, dicts, one tensor)."""
        if self._data_record is None:
            hashes = {split: self.split_hashes(split) for split in SPLITS}
            self._data_record = {
                "version": 1,
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "args": self.split_args(),
                "sizes": {split: len(h) for split, h in hashes.items()},
                "fingerprints": {split: hashes_fingerprint(h) for split, h in hashes.items()},
                "train_hashes": hashes["train"].sort().values,
            }
        return self._data_record


def _loader_generator(seed: int) -> torch.Generator:
    """The loader's own generator: a DataLoader draws its workers' base seed each time it is
    iterated, from the global RNG when it has none. With its own, iterating loaders (validation
    every epoch, the loader made before a resumed fit) leaves the global RNG, and so dropout, alone."""
    return torch.Generator().manual_seed(seed)
