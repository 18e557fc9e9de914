"""A byte-level tokenizer: every text is its UTF-8 bytes, so nothing is ever unknown and nothing is learnt.

Ids: 0 ``"<pad>"``, 1 ``"<bos>"``, 2 ``"<eos>"``, then byte ``b`` at id ``3 + b`` (259 ids in all).
A byte's token string is its character for printable ASCII (space included), else ``"<0xNN>"``
(as Llama's byte-fallback tokens), so figures can show it. Same interface as the tokenizers of
:mod:`kdlight.data.tokenizers` (``fit``, ``encode``, ``decode``, ``vocab``, ``state``), plus
:meth:`ByteTokenizer.ids` (one text, unpadded) and :meth:`ByteTokenizer.decode_text` (ids back to text).

    >>> tok = ByteTokenizer()
    >>> tok.encode(["hi"], max_length=4).tolist()
    [[107, 108, 0, 0]]
    >>> tok.decode_text(tok.ids("héllo"))
    'héllo'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def byte_token(value: int) -> str:
    """The token string of one byte: printable ASCII as itself, any other byte as ``<0xNN>``."""
    return chr(value) if 0x20 <= value <= 0x7E else f"<0x{value:02X}>"


class ByteTokenizer:
    """UTF-8 bytes as token ids ``3 + byte``, after ``<pad>`` (0), ``<bos>`` (1) and ``<eos>`` (2)."""

    kind: ClassVar[str] = "byte"
    pad_id: ClassVar[int] = 0
    bos_id: ClassVar[int] = 1
    eos_id: ClassVar[int] = 2
    #: id of byte 0
    offset: ClassVar[int] = 3
    vocab_size: ClassVar[int] = 3 + 256

    def __init__(self) -> None:
        self.vocab: list[str] = [PAD, BOS, EOS, *(byte_token(b) for b in range(256))]

    @property
    def fitted(self) -> bool:
        return True

    def fit(self, texts: Iterable[str]) -> ByteTokenizer:
        """Nothing to learn (the vocabulary is fixed); returns ``self`` for the common interface."""
        return self

    def ids(self, text: str) -> Tensor:
        """The ids ``[L]`` (int64) of one text's UTF-8 bytes, no specials, no padding."""
        data = bytearray(str(text).encode("utf-8"))
        if not data:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(data, dtype=torch.uint8).long() + self.offset

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Token ids ``[N, T]`` (int64), padded with ``pad_id`` and truncated at ``max_length``
        (None: the longest text's length)."""
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 (or None: the longest text), got {max_length}")
        rows = [self.ids(t)[:max_length] for t in texts]
        length = max_length if max_length is not None else max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def decode(self, ids: Tensor | Sequence[int]) -> list[str]:
        """The token strings of one sequence, padding left out."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.vocab[int(i)] for i in values if int(i) != self.pad_id]

    def decode_text(self, ids: Tensor | Sequence[int]) -> str:
        """The text of one sequence's byte ids (specials and padding left out; invalid UTF-8,
        e.g. a character cut at a chunk's end, becomes U+FFFD)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        data = bytes(int(i) - self.offset for i in values if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")

    def state(self) -> dict[str, Any]:
        """A JSON-able description (:meth:`from_state` rebuilds the tokenizer)."""
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ByteTokenizer:
        if state.get("kind") != cls.kind:
            raise ValueError(
                f"ByteTokenizer.from_state got a {state.get('kind')!r} tokenizer state; use Tokenizer.from_state"
            )
        return cls()
