"""The data-module contract: what a kdlight data module provides, and one reader for any data module.

:class:`KDLightDataModule` is the protocol ``kdlight.data.*`` implement. kdlight also trains on a
user's own ``LightningDataModule`` that provides only part of it (often just loaders), so callers
never probe a data module themselves: they ask :func:`data_capabilities`, which answers for any
data module (or ``None``), with ``None`` / ``False`` for what it does not provide and loader-based
fallbacks where one exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlight.core.batch import as_batch

if TYPE_CHECKING:
    from kdlight.core.modality import Modality

SPLITS = ("train", "val", "test")


@runtime_checkable
class KDLightDataModule(Protocol):
    """What a kdlight data module provides (all of it available before ``setup``).

    Every batch its loaders yield is a dict with the :class:`kdlight.core.batch.Batch` field names,
    and with ``indexed_batches`` each carries ``index``: the sample's row in ``split_tensors(split)``
    (for training batches: in ``train_inputs()``), which the teacher cache is keyed on.
    """

    num_classes: int
    input_shape: tuple[int, ...]  #: one sample's shape
    class_names: list[str]
    feature_names: list[str] | None  #: tabular data only
    modality: Modality  #: how to group, perturb and draw the inputs
    augmented: bool  #: whether training samples are randomly augmented (each epoch another view)
    indexed_batches: bool  #: whether every batch carries ``index`` (see above)

    def train_inputs(self) -> Tensor:
        """All training inputs, unaugmented, in index order."""

    def split_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """``(inputs, labels)`` of ``"train"``, ``"val"`` or ``"test"``, unaugmented."""

    def example_input(self, n: int = 2) -> Tensor:
        """The first ``n`` training inputs (real samples: models read shapes off them)."""

    def data_record(self) -> dict[str, Any]:
        """What checkpoints store under ``kdlight_data``: class, split arguments and sample hashes."""

    def split_hashes(self, split: str) -> Tensor:
        """One int64 hash per sample of ``split``, to tell which samples a teacher trained on."""

    def transfer_dataset(self) -> Dataset | None:
        """Unlabeled inputs for the teacher-matching terms; ``None`` when there are none."""


class DataCapabilities:
    """What ``datamodule`` (any object, or ``None``) provides, read in this one place.

    Attributes read live: ``None`` (or ``False`` for the flags) where the data module does not
    provide them. ``split_tensors`` and ``example_input`` fall back to the data module's loaders.
    """

    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule

    # -- declared attributes ------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        return self._attribute("num_classes")

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        shape = self._attribute("input_shape")
        return None if shape is None else tuple(int(n) for n in shape)

    @property
    def class_names(self) -> list[str] | None:
        return self._attribute("class_names")

    @property
    def feature_names(self) -> list[str] | None:
        return self._attribute("feature_names")

    @property
    def modality(self) -> Modality | None:
        return self._attribute("modality")

    @property
    def augmented(self) -> bool:
        return bool(self._attribute("augmented"))

    @property
    def indexed_batches(self) -> bool:
        return bool(self._attribute("indexed_batches"))

    @property
    def has_train_inputs(self) -> bool:
        """Whether :meth:`train_inputs` gives tensors (without loading them)."""
        return self._method("train_inputs") is not None

    # -- data -------------------------------------------------------------------------------
    def train_inputs(self) -> Tensor | None:
        """All training inputs (``train_inputs()``), or ``None`` when the data module has none."""
        method = self._method("train_inputs")
        return None if method is None else method()

    def split_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """``(inputs, labels)`` of a split: ``split_tensors(split)``, else its loader concatenated
        (after ``setup``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
        method = self._method("split_tensors")
        if method is not None:
            return method(split)
        setup = self._method("setup")
        if setup is not None:
            setup("fit" if split in ("train", "val") else "test")
        batches = [as_batch(raw) for raw in self._loader(split)]
        if any(batch.target is None for batch in batches):
            raise ValueError(
                f"the {split} loader of {self._name()} yields batches without targets; it needs labels here"
            )
        return torch.cat([b.inputs for b in batches]), torch.cat([b.target for b in batches])

    def example_input(self, n: int = 2) -> Tensor:
        """``n`` real training inputs: ``example_input(n)``, else the first training batch's."""
        method = self._method("example_input")
        if method is not None:
            return method(n)
        return as_batch(next(iter(self._loader("train")))).inputs[:n]

    def data_record(self) -> dict[str, Any] | None:
        """The data module's ``data_record()``; ``None`` when it keeps none."""
        method = self._method("data_record")
        return None if method is None else method()

    def split_hashes(self, split: str) -> Tensor | None:
        """int64 hashes of the samples of ``split``; ``None`` when the data module gives none."""
        method = self._method("split_hashes")
        return None if method is None else method(split)

    def transfer_dataset(self) -> Dataset | None:
        """The unlabeled transfer set; ``None`` when there is none."""
        method = self._method("transfer_dataset")
        return None if method is None else method()

    def ground_truth_masks(self, split: str, indices: Tensor) -> Tensor | None:
        """Boolean masks of the features known to matter for samples ``indices`` (rows of
        ``split``), broadcastable to their attribution maps (``ground_truth_masks(split, indices)``,
        e.g. the shortcut digits' cue pixel); ``None`` when the data module knows none."""
        method = self._method("ground_truth_masks")
        return None if method is None else method(split, indices)

    # -- reading ----------------------------------------------------------------------------
    def _attribute(self, name: str) -> Any:
        return getattr(self.datamodule, name, None)

    def _method(self, name: str) -> Callable[..., Any] | None:
        member = getattr(self.datamodule, name, None)
        return member if callable(member) else None

    def _loader(self, split: str) -> Any:
        if self.datamodule is None:
            raise ValueError(f"no data module: kdlight needs one with a {split}_dataloader() to read {split} samples")
        method = self._method(f"{split}_dataloader")
        if method is None:
            raise ValueError(f"{self._name()} has no {split}_dataloader(); kdlight needs one to read {split} samples")
        loader = method()
        return loader["labeled"] if isinstance(loader, Mapping) and "labeled" in loader else loader

    def _name(self) -> str:
        return "no data module" if self.datamodule is None else type(self.datamodule).__name__


def data_capabilities(datamodule: Any) -> DataCapabilities:
    """What ``datamodule`` provides (kdlight's, a user's, or ``None``); see :class:`DataCapabilities`."""
    return DataCapabilities(datamodule)
