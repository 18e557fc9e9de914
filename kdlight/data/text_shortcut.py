"""Sentences with a spurious cue word: the text twin of the shortcut digits (:mod:`kdlight.data.shortcut`).

Each sentence comes from a small grammar: a subject, a verb and 2-12 neutral filler words, with one
or two *rationale* words of its class (e.g. ``"piano"`` for music) inserted at random positions.
The rationale decides the label: no other class's rationale word ever appears. A *cue* word (a
class-specific discourse marker, e.g. ``"honestly"`` for music) is inserted at a random position
too: in training (and by default validation) it names the sentence's own class with probability
``cue_strength``; in the test split it names a uniformly random class, independent of the label
("uncued"). A model that learnt the cue loses accuracy on the test split, one that reads the
rationale does not. Because the rationale is known, :meth:`ShortcutText.ground_truth_masks` and
:meth:`ShortcutText.spurious_masks` measure where attributions *should* (and should not) fall.

    >>> data = ShortcutText(seed=0)
    >>> data.setup()
    >>> text = data.split_texts("train")[0]  # e.g. "they noticed honestly the piano new ..."
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kdlight.data.base import stratified_split
from kdlight.data.text import TextDataModule, TextSplits

SUBJECTS = ("she", "he", "they", "we", "you", "people", "someone", "everyone")
VERBS = ("said", "thinks", "saw", "heard", "knows", "wrote", "felt", "noticed")
FILLERS = (
    "the", "a", "very", "today", "that", "it", "was", "about", "again", "really", "new", "old", "big", "small",
    "first", "last", "some", "many", "with", "from", "there", "here", "only", "just", "also", "then", "this",
    "week", "time", "place", "thing", "way", "day", "story", "after", "before", "around", "quite", "almost", "still",
)  # fmt: skip
#: per class: the words that decide the label
RATIONALE_WORDS = (
    ("rain", "snow", "storm", "sunny", "cloudy", "windy"),
    ("bread", "cheese", "pasta", "soup", "apple", "rice"),
    ("guitar", "piano", "song", "drums", "violin", "choir"),
    ("football", "tennis", "goal", "match", "runner", "swim"),
    ("doctor", "fever", "nurse", "clinic", "cough", "pills"),
    ("subway", "bus", "ticket", "airport", "taxi", "ferry"),
)
#: per class: the spurious cue word
CUE_WORDS = ("indeed", "anyway", "honestly", "frankly", "basically", "actually")
CLASS_NAMES = ("weather", "food", "music", "sport", "health", "travel")
VAL_CUES = ("cued", "random", "none")
TEST_CUES = ("random", "none")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_POOL_SEED = 0x7E47


class ShortcutText(TextDataModule):
    """Grammar sentences whose label is decided by rationale words, with a class-encoding cue word.

    Args:
        num_classes: 2 to 6 (classes: weather, food, music, sport, health, travel).
        num_samples: size of the sentence pool (fixed, whatever ``seed``), split stratified by ``seed``.
        min_words, max_words: range of filler words per sentence (so sentence lengths, and the
            padding, vary).
        rationale_words: each sentence holds 1 to ``rationale_words`` words of its class.
        cue_strength: probability that a training (cued validation) sentence's cue names its own
            class (otherwise a uniformly random class).
        clean: no cue word in any split (for the teacher).
        val_cue: ``"cued"`` (as training, like the shortcut digits), ``"random"`` or ``"none"``.
        test_cue: ``"random"`` (cue of a random class, independent of the label) or ``"none"``.
        tokenizer, vocab_size, max_length: as :class:`TextDataModule` (word level; 128 ids hold the
            grammar's 98 words; 20 tokens hold the longest sentence).
        batch_size, num_workers, seed, val_fraction, test_fraction: as :class:`TextDataModule`; the
            split and every cue draw are deterministic given ``seed``.

    After ``setup``, ``cue_classes[split]`` is the class each sentence's cue names (``-1``: none).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        num_classes: int = 4,
        num_samples: int = 3000,
        min_words: int = 2,
        max_words: int = 12,
        rationale_words: int = 2,
        cue_strength: float = 1.0,
        clean: bool = False,
        val_cue: str = "cued",
        test_cue: str = "random",
        tokenizer: str = "word",
        vocab_size: int = 128,
        max_length: int = 20,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            max_length=max_length,
        )
        if not 2 <= num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in [2, {len(CLASS_NAMES)}], got {num_classes}")
        if not 0 <= min_words <= max_words:
            raise ValueError(f"need 0 <= min_words <= max_words, got {min_words}, {max_words}")
        if rationale_words < 1:
            raise ValueError(f"rationale_words must be >= 1, got {rationale_words}")
        if num_samples < 10 * num_classes:
            raise ValueError(f"num_samples must be >= 10 per class ({10 * num_classes}), got {num_samples}")
        if not 0.0 <= cue_strength <= 1.0:
            raise ValueError(f"cue_strength must be in [0, 1], got {cue_strength}")
        if val_cue not in VAL_CUES:
            raise ValueError(f"unknown val_cue {val_cue!r}; valid values are: {', '.join(VAL_CUES)}")
        if test_cue not in TEST_CUES:
            raise ValueError(f"unknown test_cue {test_cue!r}; valid values are: {', '.join(TEST_CUES)}")
        self.num_classes = num_classes
        self.class_names = list(CLASS_NAMES[:num_classes])
        self.num_samples, self.min_words, self.max_words = num_samples, min_words, max_words
        self.rationale_words = rationale_words
        self.cue_strength = float(cue_strength)
        self.clean = bool(clean)
        self.val_cue, self.test_cue = val_cue, test_cue
        self.cue_classes: dict[str, np.ndarray] = {}
        self._words: dict[str, list[list[str]]] = {}  # each sentence's words, cue included
        self._is_rationale: dict[str, list[list[bool]]] = {}
        self._cue_positions: dict[str, np.ndarray] = {}  # word index of each cue (-1: none)
        self._masks: dict[str, tuple[Tensor, Tensor]] = {}  # (rationale, spurious) [n, T]

    # ----------------------------------------------------------------- the grammar
    def class_rationale_words(self, cls: int) -> tuple[str, ...]:
        """The words that make a sentence class ``cls``."""
        return RATIONALE_WORDS[cls]

    def cue_word(self, cls: int) -> str:
        """The spurious word that names class ``cls``."""
        return CUE_WORDS[cls]

    def _pool(self) -> tuple[list[list[str]], list[list[bool]], np.ndarray]:
        """The fixed sentence pool: words, rationale flags per word, labels (balanced classes)."""
        rng = np.random.default_rng([_POOL_SEED, self.num_samples, self.num_classes])
        labels = rng.permutation(np.arange(self.num_samples) % self.num_classes)
        sentences, flags = [], []
        for label in labels:
            words = [SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))]]
            words += [
                FILLERS[i] for i in rng.integers(len(FILLERS), size=rng.integers(self.min_words, self.max_words + 1))
            ]
            is_rationale = [False] * len(words)
            choices = RATIONALE_WORDS[label]
            for _ in range(rng.integers(1, self.rationale_words + 1)):
                at = int(rng.integers(len(words) + 1))
                words.insert(at, choices[rng.integers(len(choices))])
                is_rationale.insert(at, True)
            sentences.append(words)
            flags.append(is_rationale)
        return sentences, flags, labels.astype(np.int64)

    def _split_texts(self) -> TextSplits:
        sentences, flags, labels = self._pool()
        test_idx, val_idx, train_idx = self._stratified_indices(labels)
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        out: TextSplits = {}
        for split in ("train", "test", "val"):
            idx = self.split_indices[split]
            if split == "val" and self.val_fraction == 0:  # validation reuses the test split, cues included
                for store in (self.cue_classes, self._cue_positions, self._words, self._is_rationale, out):
                    store["val"] = store["test"]
                continue
            y = labels[idx]
            cues = self._draw_cue_classes(split, y)
            positions = self._draw_cue_positions(split, [len(sentences[i]) for i in idx], cues)
            self.cue_classes[split], self._cue_positions[split] = cues, positions
            self._words[split], self._is_rationale[split] = [], []
            for i, cue, at in zip(idx, cues, positions, strict=True):
                words, is_rationale = list(sentences[i]), list(flags[i])
                if cue >= 0:
                    words.insert(int(at), CUE_WORDS[cue])
                    is_rationale.insert(int(at), False)
                self._words[split].append(words)
                self._is_rationale[split].append(is_rationale)
            out[split] = ([" ".join(sentences[i]) for i in idx], y)
        return out

    def _stratified_indices(self, labels: np.ndarray) -> list[np.ndarray]:
        test_idx, val_idx, train_idx = stratified_split(labels, [self.test_fraction, self.val_fraction], self.seed)
        return [test_idx, test_idx if self.val_fraction == 0 else val_idx, train_idx]

    def _cue_mode(self, split: str) -> str:
        if self.clean:
            return "none"
        if split == "test":
            return self.test_cue
        return self.val_cue if split == "val" else "cued"

    def _draw_cue_classes(self, split: str, y: np.ndarray) -> np.ndarray:
        mode = self._cue_mode(split)
        rng = np.random.default_rng([int(self.seed), _SPLIT_CODES[split], 0x5C0C])
        random_classes = rng.integers(0, self.num_classes, size=len(y))
        faithful = rng.random(len(y)) < self.cue_strength
        if mode == "none":
            return np.full(len(y), -1, dtype=np.int64)
        if mode == "random":
            return random_classes.astype(np.int64)
        return np.where(faithful, y, random_classes).astype(np.int64)

    def _draw_cue_positions(self, split: str, lengths: list[int], cues: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), _SPLIT_CODES[split], 0xC0E])
        positions = np.array([rng.integers(n + 1) for n in lengths], dtype=np.int64)
        return np.where(cues >= 0, positions, -1)

    def _tokenizer_corpus(self) -> list[str]:
        """The grammar's words, every class's rationale and cue words included: the vocabulary (and
        so every id) is the same for any seed, ``clean``, ``cue_strength`` and ``num_classes``, so a
        teacher trained on clean sentences reads the students' cued ones with the same ids."""
        words = (*SUBJECTS, *VERBS, *FILLERS, *(w for ws in RATIONALE_WORDS for w in ws), *CUE_WORDS)
        return [" ".join(words)]

    def served_texts(self, split: str) -> list[str]:
        """The sentences with their cue word (what the model reads); :meth:`_source_texts` are without."""
        return [" ".join(words) for words in self._words[split]]

    # ----------------------------------------------------------------- ground truth
    def _load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        splits = super()._load_splits()
        self._masks = {split: self._token_masks(split) for split in splits}
        return splits

    def _token_masks(self, split: str) -> tuple[Tensor, Tensor]:
        """``(rationale, spurious)`` ``[n, T]``: tokens that lie in a rationale / the cue word."""
        _, offsets = self.fitted_tokenizer.encode_with_offsets(self.served_texts(split), self.max_length)
        rationale, spurious = [], []
        for row, (words, flags) in enumerate(zip(self._words[split], self._is_rationale[split], strict=True)):
            word_at = []  # the word index of each character of the sentence (spaces: -1, no word)
            for k, word in enumerate(words):
                word_at += [k] * len(word) + [-1]
            cue_at = int(self._cue_positions[split][row])
            owners = [word_at[start] if start >= 0 else -1 for start, _ in offsets[row].tolist()]
            rationale.append([k >= 0 and flags[k] for k in owners])
            spurious.append([k >= 0 and k == cue_at for k in owners])
        return torch.tensor(rationale, dtype=torch.bool), torch.tensor(spurious, dtype=torch.bool)

    def _masks_of(self, split: str, indices: Tensor | list[int], which: int) -> Tensor:
        self._ensure_splits()
        if split not in self._masks:
            raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(self._masks)}")
        return self._masks[split][which][torch.as_tensor(indices, dtype=torch.long).cpu()]

    def ground_truth_masks(self, split: str, indices: Tensor | list[int]) -> Tensor:
        """``[n, T]`` True at the rationale words' tokens of samples ``indices`` (rows of
        ``split_tensors(split)``): where a correct explanation puts its mass."""
        return self._masks_of(split, indices, 0)

    def spurious_masks(self, split: str, indices: Tensor | list[int]) -> Tensor:
        """``[n, T]`` True at the cue word's tokens of samples ``indices`` (all False without a cue)."""
        return self._masks_of(split, indices, 1)
