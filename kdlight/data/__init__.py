"""LightningDataModules: in-memory toy/tabular sets and local CIFAR (kdlight never downloads data).

Every module implements :class:`kdlight.core.datamodule.KDLightDataModule`: before ``setup`` it
exposes ``num_classes``, ``input_shape`` (per sample), ``class_names``, ``feature_names`` (tabular
only, else ``None``), ``augmented`` and ``indexed_batches``; plus ``example_input(n)``,
``train_inputs()`` and ``split_tensors(split)`` (which load the data lazily if needed). Loaders
yield named batches ``{"inputs", "target", "index"}``, read with :func:`kdlight.core.batch.as_batch`.
"""

from kdlight.data.base import ArrayDataModule, stratified_split
from kdlight.data.breast_cancer import BreastCancerDataModule
from kdlight.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataset, random_crop_flip
from kdlight.data.digits import DigitsDataModule
from kdlight.data.mnist1d import MNIST1DDataModule, generate_mnist1d
from kdlight.data.shortcut import ShortcutDigitsDataModule

__all__ = [
    "ArrayDataModule",
    "BreastCancerDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataset",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "ShortcutDigitsDataModule",
    "generate_mnist1d",
    "random_crop_flip",
    "stratified_split",
]
