"""Local tokenizers for the text data modules: characters, words, or a BPE trained on the training split.

One interface: ``fit(texts)`` (on the training split only) returns the tokenizer; ``encode(texts,
max_length)`` gives token ids ``[N, T]`` (int64) padded with ``pad_id`` and truncated at
``max_length``; ``vocab`` lists each id's string (id 0 ``"<pad>"``, id 1 ``"<unk>"``, then the
``special_tokens``, then the learnt tokens). The vocabulary always has exactly ``vocab_size``
entries: when the training texts hold fewer distinct tokens, the rest are ``"<unused{k}>"`` slots
that no text maps to (as BERT's ``[unused]`` tokens), so a config can size the models' embeddings
before any data is read. ``state()`` is a small JSON-able dict and ``from_state(state)`` rebuilds
the fitted tokenizer from it.

    >>> tok = make_tokenizer("word", vocab_size=8).fit(["the cat sat", "the dog sat"])
    >>> tok.encode(["the cat ran"], max_length=5).tolist()
    [[3, 4, 1, 0, 0]]
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

PAD, UNK = "<pad>", "<unk>"
#: one token per word, number or punctuation mark; ``<name>`` markers (e.g. ``<url>``) stay whole
WORD_PATTERN = re.compile(r"<\w+>|\w+|[^\w\s]")


def _lower(text: str) -> str:
    """``text.lower()``, but a letter whose lowercase form is longer (e.g. ``"İ"``) stays as it is."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _length(sequences: list[list[Any]], max_length: int | None) -> int:
    """The padded length: ``max_length``, or the longest sequence's when it is None."""
    return max_length if max_length is not None else max((len(seq) for seq in sequences), default=0)


class Tokenizer:
    """Base class: maps text to token ids of a vocabulary fitted on training texts.

    Subclasses implement :meth:`_pieces` (one text's ``(token string, start, end)`` pieces); the
    vocabulary is the most frequent tokens (:meth:`_learn`) unless they override :meth:`fit`.
    """

    kind: ClassVar[str]
    pad_id: int = 0
    unk_id: int = 1

    def __init__(self, vocab_size: int, lowercase: bool = True, special_tokens: Sequence[str] = ()) -> None:
        specials = [str(s) for s in special_tokens]
        if len(set(specials)) != len(specials) or {PAD, UNK} & set(specials):
            raise ValueError(f"special_tokens must be distinct and not {PAD!r}/{UNK!r}, got {specials}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2 + len(specials) + 1:
            raise ValueError(
                f"vocab_size must be an integer >= {3 + len(specials)} (<pad>, <unk>, {len(specials)} special "
                f"token(s) and one learnt token), got {vocab_size!r}"
            )
        self.vocab_size = vocab_size
        self.lowercase = bool(lowercase)
        self.special_tokens = tuple(specials)
        self.vocab: list[str] = []
        self._ids: dict[str, int] = {}

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, texts: Iterable[str]) -> Tokenizer:
        """Learn the vocabulary from ``texts`` (the training split only); returns ``self``."""
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError(f"{type(self).__name__}.fit got no texts; pass the training split's texts")
        reserved = [PAD, UNK, *self.special_tokens]
        learnt = [t for t in self._learn(texts, self.vocab_size - len(reserved)) if t not in reserved]
        self._set_vocab(reserved + learnt[: self.vocab_size - len(reserved)])
        return self

    def _set_vocab(self, tokens: list[str]) -> None:
        unused = [f"<unused{k}>" for k in range(self.vocab_size - len(tokens))]
        self.vocab = tokens + unused
        self._ids = {t: i for i, t in enumerate(tokens)}

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    # -- encoding -------------------------------------------------------------------------------
    def encode_with_offsets(self, texts: Sequence[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Token ids ``[N, T]`` and each token's character span ``[N, T, 2]`` (``start, end`` in the
        text; ``-1`` at padding). ``T = max_length`` (longer texts are truncated), or the longest
        text's length when ``max_length`` is None."""
        self._check_ready(max_length)
        pieces = [self._pieces(self._normalise(str(t)))[:max_length] for t in texts]
        length = _length(pieces, max_length)
        ids = self._padded_ids([[token for token, _, _ in p] for p in pieces], length)
        spans = [[(s, e) for _, s, e in p] + [(-1, -1)] * (length - len(p)) for p in pieces]
        return ids, torch.tensor(spans, dtype=torch.long).view(len(pieces), length, 2)

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Token ids ``[N, T]`` (int64), padded with ``pad_id`` and truncated at ``max_length``."""
        self._check_ready(max_length)
        tokens = [self._tokens(self._normalise(str(t)))[:max_length] for t in texts]
        return self._padded_ids(tokens, _length(tokens, max_length))

    def _check_ready(self, max_length: int | None) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(training texts) before encode")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 (or None: the longest text), got {max_length}")

    def _padded_ids(self, tokens: list[list[str]], length: int) -> Tensor:
        lookup, unk, pad = self._ids.get, self.unk_id, self.pad_id
        rows = [[lookup(token, unk) for token in text] + [pad] * (length - len(text)) for text in tokens]
        return torch.tensor(rows, dtype=torch.long).view(len(tokens), length)

    def _tokens(self, text: str) -> list[str]:
        """The token strings of one (normalised) text."""
        return [piece for piece, _, _ in self._pieces(text)]

    def decode(self, ids: Tensor | Sequence[int]) -> list[str]:
        """The token strings of one sequence, padding left out."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.vocab[int(i)] for i in values if int(i) != self.pad_id]

    def _normalise(self, text: str) -> str:
        """``text`` lowercased when ``lowercase``, its special tokens kept as written (so a special
        token with capitals, e.g. ``"<URL>"``, still matches); the length (and so the offsets) is kept."""
        if not self.lowercase:
            return text
        return "".join(part if special else _lower(part) for part, _, _, special in self._special_spans(text))

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A JSON-able description of the fitted tokenizer (:meth:`from_state` rebuilds it)."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "lowercase": self.lowercase,
            "special_tokens": list(self.special_tokens),
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        """Rebuild a fitted tokenizer from :meth:`state` (of any kind: dispatches on ``state["kind"]``)."""
        tokenizer_class = _tokenizer_class(state["kind"])
        tokenizer = tokenizer_class(state["vocab_size"], state["lowercase"], state["special_tokens"])
        tokenizer._load_state(state)
        return tokenizer

    def _load_state(self, state: dict[str, Any]) -> None:
        used = [t for t in state["vocab"] if not re.fullmatch(r"<unused\d+>", t)]
        self._set_vocab(used)

    # -- subclass hooks ---------------------------------------------------------------------------
    def _learn(self, texts: list[str], size: int) -> list[str]:
        """The ``size`` most frequent tokens of ``texts`` (ties broken by the string), plus room for
        the special tokens that :meth:`fit` filters out."""
        counts: Counter = Counter()
        for text in texts:
            counts.update(self._tokens(self._normalise(text)))
        return [
            t
            for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: size + len(self.special_tokens)]
        ]

    def _pieces(self, text: str) -> list[tuple[str, int, int]]:
        raise NotImplementedError

    def _special_spans(self, text: str) -> list[tuple[str, int, int, bool]]:
        """``text`` cut into ``(part, start, end, is_special)`` around the special tokens."""
        if not self.special_tokens:
            return [(text, 0, len(text), False)]
        pattern = "|".join(re.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True))
        parts, start = [], 0
        for match in re.finditer(pattern, text):
            if match.start() > start:
                parts.append((text[start : match.start()], start, match.start(), False))
            parts.append((match.group(), match.start(), match.end(), True))
            start = match.end()
        if start < len(text):
            parts.append((text[start:], start, len(text), False))
        return parts


class CharTokenizer(Tokenizer):
    """One token per character (spaces included); the ``vocab_size`` most frequent characters."""

    kind = "char"

    def __init__(self, vocab_size: int = 128, lowercase: bool = False, special_tokens: Sequence[str] = ()) -> None:
        super().__init__(vocab_size, lowercase, special_tokens)

    def _pieces(self, text: str) -> list[tuple[str, int, int]]:
        pieces = []
        for part, start, end, special in self._special_spans(text):
            if special:
                pieces.append((part, start, end))
            else:
                pieces.extend((char, start + k, start + k + 1) for k, char in enumerate(part))
        return pieces


class WordTokenizer(Tokenizer):
    """Words, numbers and punctuation marks (:data:`WORD_PATTERN`); the ``vocab_size`` most frequent."""

    kind = "word"

    def __init__(self, vocab_size: int = 5000, lowercase: bool = True, special_tokens: Sequence[str] = ()) -> None:
        super().__init__(vocab_size, lowercase, special_tokens)

    def _pieces(self, text: str) -> list[tuple[str, int, int]]:
        pieces = []
        for part, start, _, special in self._special_spans(text):
            if special:  # whole, whatever its characters (e.g. "[sep]", which WORD_PATTERN would split)
                pieces.append((part, start, start + len(part)))
            else:
                pieces.extend((m.group(), start + m.start(), start + m.end()) for m in WORD_PATTERN.finditer(part))
        return pieces


class BPETokenizer(Tokenizer):
    """Byte-pair encoding trained with Hugging Face ``tokenizers`` (BPE model, whitespace
    pre-tokenizer, trained from an iterator over the training texts; deterministic, no download)."""

    kind = "bpe"

    def __init__(self, vocab_size: int = 5000, lowercase: bool = True, special_tokens: Sequence[str] = ()) -> None:
        super().__init__(vocab_size, lowercase, special_tokens)
        self._backend: Any = None

    def _new_backend(self) -> Any:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers

        backend = HFTokenizer(models.BPE(unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        return backend

    def fit(self, texts: Iterable[str]) -> Tokenizer:
        from tokenizers import trainers

        texts = [self._normalise(str(t)) for t in texts]
        if not texts:
            raise ValueError("BPETokenizer.fit got no texts; pass the training split's texts")
        backend = self._new_backend()
        specials = [PAD, UNK, *self.special_tokens]
        trainer = trainers.BpeTrainer(vocab_size=self.vocab_size, special_tokens=specials, show_progress=False)
        backend.train_from_iterator(iter(texts), trainer=trainer)
        self._use_backend(backend)
        return self

    def _use_backend(self, backend: Any) -> None:
        self._backend = backend
        by_id = sorted(backend.get_vocab().items(), key=lambda item: item[1])
        if [i for _, i in by_id] != list(range(len(by_id))) or by_id[0][0] != PAD or by_id[1][0] != UNK:
            raise RuntimeError("the trained BPE vocabulary does not start with <pad>, <unk> at ids 0, 1")
        self._set_vocab([token for token, _ in by_id][: self.vocab_size])

    def _pieces(self, text: str) -> list[tuple[str, int, int]]:
        encoding = self._backend.encode(text, add_special_tokens=False)
        return [(token, start, end) for token, (start, end) in zip(encoding.tokens, encoding.offsets, strict=True)]

    def state(self) -> dict[str, Any]:
        return {**super().state(), "backend": self._backend.to_str() if self._backend is not None else None}

    def _load_state(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._use_backend(HFTokenizer.from_str(state["backend"]))


TOKENIZERS: dict[str, type[Tokenizer]] = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer, BPETokenizer)}


def _tokenizer_class(kind: str) -> type[Tokenizer]:
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {kind!r}; valid tokenizers are: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind]


def make_tokenizer(
    kind: str, vocab_size: int, lowercase: bool | None = None, special_tokens: Sequence[str] = ()
) -> Tokenizer:
    """An unfitted tokenizer by name (``"char"``, ``"word"`` or ``"bpe"``); ``lowercase`` None keeps
    the kind's default (characters keep case, words and BPE are lowercased)."""
    tokenizer_class = _tokenizer_class(kind)
    if lowercase is None:
        return tokenizer_class(vocab_size, special_tokens=special_tokens)
    return tokenizer_class(vocab_size, lowercase=lowercase, special_tokens=special_tokens)
