"""LightningDataModules: in-memory toy/tabular/text sets and local CIFAR (kdlight never downloads data).

Every module implements :class:`kdlight.core.datamodule.KDLightDataModule`: before ``setup`` it
exposes ``num_classes``, ``input_shape`` (per sample), ``class_names``, ``feature_names`` (tabular
only, else ``None``), ``augmented`` and ``indexed_batches``; plus ``example_input(n)``,
``train_inputs()`` and ``split_tensors(split)`` (which load the data lazily if needed). Loaders
yield named batches ``{"inputs", "target", "index"}``, read with :func:`kdlight.core.batch.as_batch`;
text modules (:class:`TextDataModule`) add ``attention_mask`` and a ``vocab_size`` to link models to.
"""

from kdlight.data.base import ArrayDataModule, stratified_split
from kdlight.data.breast_cancer import BreastCancerDataModule
from kdlight.data.byte_tokenizer import ByteTokenizer
from kdlight.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataset, random_crop_flip
from kdlight.data.code_corpus import PythonSourceCorpus
from kdlight.data.digits import DigitsDataModule
from kdlight.data.mnist1d import MNIST1DDataModule, generate_mnist1d
from kdlight.data.shortcut import ShortcutDigitsDataModule
from kdlight.data.text import TextDataModule
from kdlight.data.text_shortcut import ShortcutText
from kdlight.data.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer, make_tokenizer
from kdlight.data.tweets import TrumpTweets

__all__ = [
    "ArrayDataModule",
    "BPETokenizer",
    "BreastCancerDataModule",
    "ByteTokenizer",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataset",
    "CharTokenizer",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "PythonSourceCorpus",
    "ShortcutDigitsDataModule",
    "ShortcutText",
    "TextDataModule",
    "Tokenizer",
    "TrumpTweets",
    "WordTokenizer",
    "generate_mnist1d",
    "make_tokenizer",
    "random_crop_flip",
    "stratified_split",
]
