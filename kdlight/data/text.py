"""Base for text classification data modules: raw texts -> a tokenizer fitted on the training split -> token ids.

Subclasses supply raw texts and labels (:meth:`TextDataModule._load_texts`, one pool split here, or
:meth:`TextDataModule._split_texts` for their own splits). Every sequence is padded (with
``pad_id`` 0) or truncated to ``max_length`` tokens, so all batches have the same shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlight.core.datamodule import SPLITS
from kdlight.core.modality import Text
from kdlight.data.base import ArrayDataModule, stratified_split
from kdlight.data.tokenizers import Tokenizer, make_tokenizer

TextSplits = dict[str, tuple[list[str], np.ndarray]]


def text_hashes(texts: Sequence[str]) -> Tensor:
    """One 8-byte BLAKE2b hash (int64) per text of its UTF-8 bytes: a sample's identity, whatever the tokenizer."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return torch.from_numpy(np.frombuffer(digests, dtype="<i8").copy())


def vocab_fingerprint(vocab: Sequence[str]) -> str:
    """SHA-256 (hex) of a vocabulary (id order matters): tells apart runs with different tokenizers."""
    return hashlib.sha256(json.dumps(list(vocab)).encode("utf-8")).hexdigest()


class TokenDataset(Dataset):
    """Named samples ``{"inputs": ids [T], "attention_mask": ids != pad_id, <label_key>}`` of one split
    (``label_key``: ``"target"``, a class per sequence)."""

    label_key = "target"

    def __init__(self, ids: Tensor, labels: Tensor, pad_id: int) -> None:
        self.ids, self.labels, self.pad_id = ids, labels, pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = self.ids[index]
        return {"inputs": ids, "attention_mask": ids != self.pad_id, self.label_key: self.labels[index]}


class TextDataModule(ArrayDataModule):
    """Token ids ``[N, max_length]`` (int64) of texts, with a tokenizer fitted on the training split only.

    Batches: ``{"inputs": ids, "attention_mask": ids != pad_id, "target", "index"}``.
    Attributes known before any data is read (configs link the models to them): ``num_classes``,
    ``class_names``, ``vocab_size`` (the vocabulary's exact size, ``<pad>`` = 0 and ``<unk>`` = 1
    included; ids a corpus does not fill are unused slots), ``max_length`` and ``input_shape``
    ``(max_length,)``. ``modality`` (a :class:`~kdlight.core.modality.Text` with the vocabulary's
    strings) and ``fitted_tokenizer`` read the data on first use.

    Args:
        tokenizer: ``"word"``, ``"char"`` or ``"bpe"`` (see :mod:`kdlight.data.tokenizers`).
        vocab_size: number of token ids.
        max_length: tokens per sequence (longer texts are truncated, shorter ones padded).
        test_fraction: fraction of the pool held out for testing (``val_fraction`` likewise).
        batch_size, num_workers, seed, val_fraction: as :class:`ArrayDataModule`.

    Subclasses set ``num_classes`` and ``class_names`` in ``__init__`` (and ``special_tokens``, kept
    whole by every tokenizer) and implement :meth:`_load_texts` or :meth:`_split_texts`.
    """

    #: markers the subclass writes into its texts (e.g. ``"<url>"``), one token each, ids 2, 3, ...
    special_tokens: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        tokenizer: str = "word",
        vocab_size: int = 5000,
        max_length: int = 48,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, val_fraction=val_fraction)
        if not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"need 0 < test_fraction and val_fraction + test_fraction < 1, got {val_fraction}, {test_fraction}"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens, got {max_length!r}")
        make_tokenizer(tokenizer, vocab_size, special_tokens=self.special_tokens)  # validates kind and size
        self.test_fraction = test_fraction
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.input_shape = (max_length,)
        self.pad_id = Tokenizer.pad_id
        self._tokenizer: Tokenizer | None = None
        self._texts: TextSplits = {}

    # ----------------------------------------------------------------- subclass hooks
    def _load_texts(self) -> tuple[list[str], np.ndarray]:
        """The whole pool: ``(texts, labels)`` (labels int in ``[0, num_classes)``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _load_texts or _split_texts")

    def _split_texts(self) -> TextSplits:
        """``{"train": (texts, labels), "val": ..., "test": ...}``; by default a stratified split of
        :meth:`_load_texts` (``val_fraction == 0``: validation reuses the test split)."""
        texts, labels = self._load_texts()
        labels = np.asarray(labels, dtype=np.int64)
        test_idx, val_idx, train_idx = stratified_split(labels, [self.test_fraction, self.val_fraction], self.seed)
        if self.val_fraction == 0:
            val_idx = test_idx
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        return {split: ([texts[i] for i in idx], labels[idx]) for split, idx in self.split_indices.items()}

    def _source_texts(self, split: str) -> list[str]:
        """A split's texts as stored in the source, before split-dependent changes (cues): its identity."""
        self._ensure_splits()
        return self._texts[split][0]

    # ----------------------------------------------------------------- data
    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        self._texts = self._split_texts()
        tokenizer = make_tokenizer(self.tokenizer, self.vocab_size, special_tokens=self.special_tokens)
        self._tokenizer = tokenizer.fit(self._tokenizer_corpus())
        splits = {
            split: (self.encode(self.served_texts(split)), torch.as_tensor(labels, dtype=torch.long))
            for split, (_, labels) in self._texts.items()
        }
        modality = self._modality()
        for ids, _ in splits.values():
            modality.check_ids(ids)
        return splits

    def _tokenizer_corpus(self) -> list[str]:
        """The texts the tokenizer is fitted on: the training split (a subclass with a fixed
        vocabulary returns it, so the ids do not depend on seeds or options)."""
        return self.served_texts("train")

    def served_texts(self, split: str) -> list[str]:
        """The texts the model reads for ``split`` (what is tokenized; subclasses may add cues)."""
        return self._texts[split][0]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Token ids ``[N, max_length]`` of ``texts`` with the fitted tokenizer."""
        return self.fitted_tokenizer.encode(texts, self.max_length)

    def _make_dataset(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        return TokenDataset(x, y, self.pad_id)

    # ----------------------------------------------------------------- vocabulary
    @property
    def fitted_tokenizer(self) -> Tokenizer:
        """The tokenizer fitted on the training split (reads the data on first use)."""
        if self._tokenizer is None:
            self._ensure_splits()
        assert self._tokenizer is not None
        return self._tokenizer

    def _modality(self) -> Text:
        return Text(self.vocab_size, self.pad_id, tokens=tuple(self.fitted_tokenizer.vocab), max_length=self.max_length)

    @property
    def modality(self) -> Text:
        """Token ids of this vocabulary, padded with ``pad_id`` to ``max_length``."""
        return self._modality()

    def split_texts(self, split: str) -> list[str]:
        """The raw texts of ``split`` as the model reads them (rows of ``split_tensors(split)``)."""
        self._ensure_splits()
        if split not in self._texts:
            raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
        return self.served_texts(split)

    # ----------------------------------------------------------------- identity
    def split_hashes(self, split: str) -> Tensor:
        """int64 hashes of each source text of ``split`` (independent of the tokenizer), cached."""
        if split not in self._split_hashes:
            self._split_hashes[split] = text_hashes(self._source_texts(split))
        return self._split_hashes[split]

    def data_record(self) -> dict[str, Any]:
        """:meth:`ArrayDataModule.data_record` plus ``tokenizer``: kind, vocab_size, max_length and
        the vocabulary's SHA-256, so a teacher trained with another tokenizer is detectable."""
        record = super().data_record()
        if "tokenizer" not in record:
            record["tokenizer"] = tokenizer_record(self)
        return record


def tokenizer_record(data: Any) -> dict[str, Any]:
    """The ``tokenizer`` entry of a token data module's record: kind, vocab_size, max_length and the
    fitted vocabulary's SHA-256 (what :func:`vocabulary_mismatch` compares)."""
    return {
        "kind": data.tokenizer,
        "vocab_size": data.vocab_size,
        "max_length": data.max_length,
        "vocab_sha256": vocab_fingerprint(data.fitted_tokenizer.vocab),
    }


def vocabulary_mismatch(teacher_records: list[dict[str, Any]], own: dict[str, Any] | None) -> str | None:
    """One line when a teacher was trained on token ids of another vocabulary than this data's
    (compared by the ``tokenizer`` entries of the data records; None when they agree or either
    side recorded no tokenizer)."""
    mine = (own or {}).get("tokenizer")
    if not isinstance(mine, dict):
        return None
    for record in teacher_records:
        theirs = record.get("tokenizer")
        if isinstance(theirs, dict) and theirs.get("vocab_sha256") != mine.get("vocab_sha256"):
            where = f"teacher_checkpoint {record['checkpoint']}" if record.get("checkpoint") else "the teacher"
            return (
                f"{where} was trained on the token ids of another vocabulary ({_describe(theirs)}) than this data's "
                f"({_describe(mine)}), so the same ids would mean other tokens; use the teacher's data settings "
                "(tokenizer, vocab_size and the data it was fitted on)"
            )
    return None


def _describe(tokenizer: dict[str, Any]) -> str:
    digest = str(tokenizer.get("vocab_sha256", ""))[:12]
    return f"{tokenizer.get('kind')} tokenizer, {tokenizer.get('vocab_size')} tokens, vocabulary sha256 {digest}..."
