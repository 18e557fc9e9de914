"""LightningDataModules: in-memory toy/tabular sets and local CIFAR (kdlight never downloads data).

Every module exposes, before ``setup``: ``num_classes``, ``input_shape`` (per sample),
``class_names``, ``feature_names`` (tabular only, else ``None``) and ``augmented``; plus
``example_input(n)`` and ``train_inputs()`` (which load the data lazily if needed).
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
