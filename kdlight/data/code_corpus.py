"""A code corpus that needs no download: the Python standard library's own source files.

:class:`PythonSourceCorpus` reads the public top-level modules of the running Python's standard
library (``sysconfig.get_paths()["stdlib"]``; names not starting with ``_``), sorted by name, and
keeps the first ``max_files``. Files are split train/val/test BY FILE (a seeded permutation), so no
file contributes to two splits; each file becomes ``<bos> tokens <eos>``, cut into chunks of
``max_length`` tokens (the last one right-padded). Batches follow the LM convention of
:mod:`kdlight.data.lm` (shifted ``labels`` with -100).

Sizes with the defaults (Python 3.11.7, whose stdlib the test pins; another Python ships other
files, and ``data_record`` records which): byte tokenizer, 16 files (abc.py ... chunk.py), seed 0:
10 train / 3 val / 3 test files, real tokens 267,584 / 60,873 / 57,709 in 2,096 / 477 / 452 chunks
of 128, built in 0.1-0.7 s on a shared 2-core machine; ``tokenizer="bpe"`` (2000 ids) on the same
files: 56,882 / 17,193 / 16,910 tokens in 450 / 136 / 134 chunks, built in about 0.7 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlight.core.datamodule import SPLITS
from kdlight.core.modality import Text
from kdlight.data.base import ArrayDataModule
from kdlight.data.byte_tokenizer import BOS, EOS, ByteTokenizer
from kdlight.data.lm import LMDataset, chunk_sequence, next_token_labels
from kdlight.data.text import tokenizer_record
from kdlight.data.tokenizers import Tokenizer, make_tokenizer

TOKENIZER_KINDS = ("byte", "bpe")
#: BPE vocabulary when ``vocab_size`` is not given
DEFAULT_BPE_VOCAB = 2000


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The public top-level ``.py`` files of ``root`` (default: the standard library), sorted by name."""
    directory = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not directory.is_dir():
        raise ValueError(f"corpus root {str(directory)!r} is not a directory; pass a folder of .py files")
    return sorted(p for p in directory.glob("*.py") if p.is_file() and not p.name.startswith("_"))


def split_by_file(sizes: list[int], val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted file indices per split, whole files each. The files, in an order permuted by
    ``seed``, go first one to each split, then each to the split furthest below its share of all
    ``sizes`` (``test_fraction``, ``val_fraction``, the rest for ``train``). ``val_fraction == 0``:
    no validation files, ``val`` is ``test``."""
    names = ["test", "val", "train"] if val_fraction > 0 else ["test", "train"]
    if len(sizes) < len(names):
        raise ValueError(f"{len(sizes)} files cannot fill {len(names)} splits; raise max_files")
    shares = {"test": test_fraction, "val": val_fraction, "train": 1.0 - test_fraction - val_fraction}
    total = float(sum(sizes)) or 1.0
    held = {name: 0.0 for name in names}
    members: dict[str, list[int]] = {name: [] for name in names}
    for rank, index in enumerate(np.random.default_rng(seed).permutation(len(sizes)).tolist()):
        name = names[rank] if rank < len(names) else max(names, key=lambda n: shares[n] - held[n] / total)
        members[name].append(index)
        held[name] += sizes[index]
    members.setdefault("val", members["test"])
    return {name: np.sort(np.asarray(members[name], dtype=np.int64)) for name in SPLITS}


class PythonSourceCorpus(ArrayDataModule):
    """Next-token prediction on the standard library's source: chunks ``[N, max_length]`` of token ids.

    Batches: ``{"inputs": ids, "attention_mask": ids != pad_id, "labels", "index"}`` with
    ``labels[:, t] = inputs[:, t + 1]`` and -100 at the last position and before padding.
    ``split_tensors(split)`` gives ``(ids, labels)``. Known before any data is read: ``vocab_size``,
    ``pad_id`` (0), ``max_length``, ``input_shape`` ``(max_length,)`` and ``num_classes``
    (= ``vocab_size``: each position is a ``vocab_size``-way prediction). ``modality`` (a
    :class:`~kdlight.core.modality.Text` with the vocabulary's strings), ``class_names`` (the
    vocabulary) and ``fitted_tokenizer`` read the data on first use.

    Args:
        tokenizer: ``"byte"`` (:class:`~kdlight.data.byte_tokenizer.ByteTokenizer`, 259 ids, exact
            round trip) or ``"bpe"`` (:class:`~kdlight.data.tokenizers.BPETokenizer` with ``<bos>``,
            ``<eos>`` specials, case kept, fitted on the training files only; its whitespace
            pre-tokenizer drops spaces and newlines, so its ids do not round-trip the layout).
        vocab_size: None: 259 for bytes (the only valid value), 2000 for BPE.
        max_length: tokens per chunk (>= 2).
        max_files: how many files of the sorted list to read (all of them when fewer exist).
        root: folder of ``.py`` files instead of the standard library.
        batch_size, num_workers, seed, val_fraction: as :class:`ArrayDataModule`; ``val_fraction``
            and ``test_fraction`` are shares of the corpus's bytes, met with whole files (at least one each).
    """

    def __init__(
        self,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        tokenizer: str = "byte",
        vocab_size: int | None = None,
        max_length: int = 128,
        max_files: int = 16,
        root: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, val_fraction=val_fraction)
        if tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"unknown tokenizer {tokenizer!r}; valid tokenizers are: {', '.join(TOKENIZER_KINDS)}")
        if not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"need 0 < test_fraction and val_fraction + test_fraction < 1, got {val_fraction}, {test_fraction}"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length must be an integer >= 2 (one token to read, one to predict), got {max_length!r}"
            )
        if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 3:
            raise ValueError(f"max_files must be an integer >= 3 (one file per split), got {max_files!r}")
        if tokenizer == "byte" and vocab_size not in (None, ByteTokenizer.vocab_size):
            raise ValueError(
                f"the byte tokenizer has exactly {ByteTokenizer.vocab_size} ids, got vocab_size={vocab_size}"
            )
        vocab_size = (
            vocab_size
            if vocab_size is not None
            else (ByteTokenizer.vocab_size if tokenizer == "byte" else DEFAULT_BPE_VOCAB)
        )
        if tokenizer == "bpe":
            make_tokenizer("bpe", vocab_size, lowercase=False, special_tokens=(BOS, EOS))  # validates the size
        self.test_fraction = test_fraction
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.max_files = max_files
        self.root = root
        self.pad_id = 0
        self.num_classes = vocab_size
        self.input_shape = (max_length,)
        self._tokenizer: ByteTokenizer | Tokenizer | None = None
        self._files: list[Path] = []

    # ----------------------------------------------------------------- data
    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        available = stdlib_files(self.root)
        self._files = available[: self.max_files]
        if len(self._files) < 3:
            raise ValueError(f"{self.root or 'the standard library'} has {len(self._files)} .py files; need at least 3")
        texts = [
            path.read_bytes().decode("utf-8", errors="replace") for path in self._files
        ]  # newlines kept as they are
        sizes = [len(t.encode("utf-8")) for t in texts]
        self.split_indices = split_by_file(sizes, self.val_fraction, self.test_fraction, self.seed)
        self._tokenizer = self._fit_tokenizer([texts[i] for i in self.split_indices["train"]])
        splits = {split: self._encode_files([texts[i] for i in idx]) for split, idx in self.split_indices.items()}
        modality = self._modality()
        for ids, _ in splits.values():
            modality.check_ids(ids)
        return splits

    def _fit_tokenizer(self, train_texts: list[str]) -> ByteTokenizer | Tokenizer:
        if self.tokenizer == "byte":
            return ByteTokenizer()
        return make_tokenizer("bpe", self.vocab_size, lowercase=False, special_tokens=(BOS, EOS)).fit(train_texts)

    def _document_ids(self, text: str) -> Tensor:
        """``<bos>``, the text's token ids, ``<eos>``."""
        tokenizer = self.fitted_tokenizer
        if isinstance(tokenizer, ByteTokenizer):
            body, bos, eos = tokenizer.ids(text), tokenizer.bos_id, tokenizer.eos_id
        else:
            body = tokenizer.encode([text])[0]
            bos, eos = tokenizer.vocab.index(BOS), tokenizer.vocab.index(EOS)
        return torch.cat([torch.tensor([bos]), body, torch.tensor([eos])])

    def _encode_files(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Chunks ``[N, max_length]`` of every file (in file order) and their next-token labels."""
        chunks = [chunk_sequence(self._document_ids(t), self.max_length, self.pad_id) for t in texts]
        ids = torch.cat(chunks) if chunks else torch.zeros(0, self.max_length, dtype=torch.long)
        return ids, next_token_labels(ids, self.pad_id)

    def _make_dataset(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        return LMDataset(x, y, self.pad_id)

    # ----------------------------------------------------------------- vocabulary and files
    @property
    def fitted_tokenizer(self) -> ByteTokenizer | Tokenizer:
        """The tokenizer (for BPE: fitted on the training files; reads the data on first use)."""
        if self._tokenizer is None:
            self._ensure_splits()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """The vocabulary: one "class" per next token."""
        return list(self.fitted_tokenizer.vocab)

    def _modality(self) -> Text:
        return Text(self.vocab_size, self.pad_id, tokens=tuple(self.fitted_tokenizer.vocab), max_length=self.max_length)

    @property
    def modality(self) -> Text:
        """Token ids of this vocabulary, padded with ``pad_id`` to ``max_length``."""
        return self._modality()

    def split_files(self, split: str) -> list[str]:
        """The file names of ``split`` (in the order their chunks appear)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
        self._ensure_splits()
        return [self._files[i].name for i in self.split_indices[split]]

    def token_counts(self) -> dict[str, int]:
        """Real (non-padding) tokens per split, ``<bos>``/``<eos>`` included."""
        return {split: int((x != self.pad_id).sum()) for split, (x, _) in self._ensure_splits().items()}

    # ----------------------------------------------------------------- identity
    def files_fingerprint(self) -> str:
        """SHA-256 (hex) of the file list: each file's name and the SHA-256 of its bytes, in order."""
        self._ensure_splits()
        entries = [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in self._files]
        return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()

    def data_record(self) -> dict[str, Any]:
        """:meth:`ArrayDataModule.data_record` plus ``tokenizer`` (kind, vocab_size, max_length,
        vocabulary SHA-256, as :meth:`TextDataModule.data_record`) and ``corpus`` (Python version,
        file count, the files' fingerprint)."""
        record = super().data_record()
        if "tokenizer" not in record:
            record["tokenizer"] = tokenizer_record(self)
            record["corpus"] = {
                "python": sys.version.split()[0],
                "files": len(self._files),
                "files_sha256": self.files_fingerprint(),
            }
        return record
