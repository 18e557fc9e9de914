"""ShortcutText: rationale words decide the label, the cue word follows it in training only, and the
ground-truth masks mark exactly those words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from kdlight.core.datamodule import data_capabilities
from kdlight.data.text_shortcut import CUE_WORDS, FILLERS, RATIONALE_WORDS, SUBJECTS, VERBS, ShortcutText

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def data() -> ShortcutText:
    dm = ShortcutText(seed=2, cue_strength=0.9)
    dm.setup()
    return dm


def masked_words(dm: ShortcutText, split: str, masks: torch.Tensor) -> list[list[str]]:
    ids = dm.split_tensors(split)[0]
    return [dm.modality.decode(row[mask]) for row, mask in zip(ids, masks, strict=True)]


def read_cue(dm: ShortcutText, split: str) -> np.ndarray:
    """The class named by the cue word found in each sentence's text (-1: none)."""
    found = [[w for w in text.split() if w in CUE_WORDS] for text in dm.split_texts(split)]
    assert all(len(words) <= 1 for words in found)
    return np.array([CUE_WORDS.index(words[0]) if words else -1 for words in found])


def test_grammar_word_lists_are_disjoint():
    groups = [set(SUBJECTS), set(VERBS), set(FILLERS), set(CUE_WORDS), *map(set, RATIONALE_WORDS)]
    assert sum(len(g) for g in groups) == len(set().union(*groups))


@pytest.mark.parametrize("split", SPLITS)
def test_label_is_the_class_of_the_rationale_words(data, split):
    for text, label in zip(data.split_texts(split), data.split_tensors(split)[1].tolist(), strict=True):
        classes = {c for w in text.split() for c, words in enumerate(RATIONALE_WORDS) if w in words}
        assert classes == {label}


@pytest.mark.parametrize("split", SPLITS)
def test_ground_truth_masks_mark_exactly_the_rationale_words(data, split):
    ids, labels = data.split_tensors(split)
    masks = data_capabilities(data).ground_truth_masks(split, torch.arange(len(ids)))
    assert masks.shape == ids.shape and masks.dtype == torch.bool
    assert not (masks & (ids == 0)).any()
    for words, text, label in zip(
        masked_words(data, split, masks), data.split_texts(split), labels.tolist(), strict=True
    ):
        assert words == [w for w in text.split() if w in RATIONALE_WORDS[label]]
        assert 1 <= len(words) <= 2


@pytest.mark.parametrize("split", SPLITS)
def test_spurious_masks_mark_exactly_the_cue_word(data, split):
    masks = data.spurious_masks(split, list(range(len(data.split_texts(split)))))
    cues = read_cue(data, split)
    assert (cues >= 0).all() and np.array_equal(cues, data.cue_classes[split])
    assert masked_words(data, split, masks) == [[CUE_WORDS[c]] for c in cues]


def test_masks_follow_the_indices_asked_for(data):
    rows = torch.tensor([5, 0, 5])
    full = data.ground_truth_masks("val", torch.arange(len(data.split_texts("val"))))
    assert torch.equal(data.ground_truth_masks("val", rows), full[rows])


@pytest.mark.parametrize("split", ["train", "val"])
def test_cue_agrees_with_the_label_at_the_configured_rate(data, split):
    agree = (read_cue(data, split) == data.split_tensors(split)[1].numpy()).mean()
    expected = 0.9 + 0.1 / data.num_classes  # a random cue still names the label 1/K of the time
    assert agree == pytest.approx(expected, abs=0.04)


def test_cue_is_independent_of_the_label_on_the_test_split(data):
    cues, labels = read_cue(data, "test"), data.split_tensors("test")[1].numpy()
    table = np.zeros((data.num_classes, data.num_classes))
    np.add.at(table, (labels, cues), 1)
    assert chi2_contingency(table).pvalue > 0.01
    assert (cues == labels).mean() == pytest.approx(1 / data.num_classes, abs=0.06)


def test_clean_and_uncued_options_leave_the_cue_out():
    clean = ShortcutText(clean=True)
    assert all((read_cue(clean, split) == -1).all() for split in SPLITS)
    assert not clean.spurious_masks("train", [0, 1, 2]).any()
    options = ShortcutText(val_cue="none", test_cue="none")
    assert (read_cue(options, "val") == -1).all() and (read_cue(options, "test") == -1).all()
    assert (read_cue(options, "train") >= 0).all()
    shuffled = ShortcutText(val_cue="random")
    assert (read_cue(shuffled, "val") == shuffled.split_tensors("val")[1].numpy()).mean() < 0.4


def test_deterministic_given_seed_and_the_pool_is_the_same_for_every_seed():
    a, b, other = ShortcutText(seed=4), ShortcutText(seed=4), ShortcutText(seed=5)
    assert a.split_texts("train") == b.split_texts("train")
    assert torch.equal(a.split_tensors("test")[0], b.split_tensors("test")[0])
    assert a.split_texts("train") != other.split_texts("train")
    pool = lambda dm: sorted(torch.cat([dm.split_hashes(s) for s in SPLITS]).tolist())  # noqa: E731
    assert pool(a) == pool(other)  # the same sentences (without cue), split differently


def test_lengths_vary_so_padding_occurs_and_nothing_is_truncated(data):
    lengths = (data.train_inputs() != 0).sum(1)
    assert lengths.min() < lengths.max() <= data.max_length - 1
    assert data.modality.vocab_size == data.vocab_size == 128


def test_masks_cover_whole_words_with_a_subword_tokenizer():
    dm = ShortcutText(tokenizer="char", vocab_size=40, max_length=120, num_samples=200)
    ids, labels = dm.split_tensors("test")
    rationale = dm.ground_truth_masks("test", torch.arange(len(ids)))
    for row, mask, text, label in zip(ids, rationale, dm.split_texts("test"), labels.tolist(), strict=True):
        expected = "".join(w for w in text.split() if w in RATIONALE_WORDS[label])
        assert "".join(dm.modality.decode(row[mask])) == expected


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="valid values are: cued, random, none"):
        ShortcutText(val_cue="sometimes")
    with pytest.raises(ValueError, match=r"num_classes must be in \[2, 6\]"):
        ShortcutText(num_classes=7)


def test_ids_do_not_depend_on_seed_cleanliness_or_classes():
    """A teacher trained on clean sentences must read the students' cued ones with the same ids."""
    vocabularies = []
    for kwargs in ({"seed": 0}, {"seed": 1, "clean": True}, {"seed": 2, "cue_strength": 0.0, "num_classes": 2}):
        data = ShortcutText(**kwargs)
        data.setup()
        vocabularies.append(data.fitted_tokenizer.vocab)
        assert (
            data.data_record()["tokenizer"]["vocab_sha256"] == ShortcutText().data_record()["tokenizer"]["vocab_sha256"]
        )
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]
