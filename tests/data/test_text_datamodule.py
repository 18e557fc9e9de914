"""TextDataModule: tokenizer fitted on the training split only, named token batches, identity and record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlight.core.batch import as_batch
from kdlight.core.modality import Text
from kdlight.data.base import teacher_data_overlap
from kdlight.data.text import TextDataModule, TextSplits


class Sentences(TextDataModule):
    """60 sentences of 2 classes; label 1 sentences say "good", label 0 ones "bad"."""

    def __init__(self, seed: int = 0, tokenizer: str = "word", vocab_size: int = 40, max_length: int = 8, **kw):
        super().__init__(seed=seed, tokenizer=tokenizer, vocab_size=vocab_size, max_length=max_length, **kw)
        self.num_classes, self.class_names = 2, ["bad", "good"]

    def _load_texts(self) -> tuple[list[str], np.ndarray]:
        labels = np.arange(60) % 2
        texts = [
            " ".join(["it", "was", "good" if y else "bad"] + [f"w{i % 7}"] * (i % 5)) for i, y in enumerate(labels)
        ]
        return texts, labels


class FixedSplits(Sentences):
    """Hand-written splits: "zebra" appears only in the test split."""

    def _split_texts(self) -> TextSplits:
        y = np.array([0, 1])
        return {"train": (["a cat", "a dog"], y), "val": (["a cat", "the dog"], y), "test": (["a zebra", "zebra"], y)}


@pytest.fixture(scope="module")
def data() -> Sentences:
    dm = Sentences(batch_size=16)
    dm.setup()
    return dm


def test_attributes_known_before_setup():
    dm = Sentences(vocab_size=33, max_length=6)
    assert (dm.num_classes, dm.vocab_size, dm.max_length, dm.input_shape) == (2, 33, 6, (6,))


def test_modality_is_text_of_the_fitted_vocabulary(data):
    text = data.modality
    assert isinstance(text, Text)
    assert (text.vocab_size, text.pad_id, text.max_length) == (40, 0, 8)
    assert list(text.tokens) == data.fitted_tokenizer.vocab and text.tokens[:2] == ("<pad>", "<unk>")


def test_batches_are_named_token_batches_with_the_padding_mask(data):
    raw = next(iter(data.train_dataloader()))
    assert set(raw) == {"inputs", "attention_mask", "target", "index"}
    batch = as_batch(raw)
    assert batch.inputs.shape == (16, 8) and batch.inputs.dtype == torch.long
    assert torch.equal(batch.attention_mask, batch.inputs != 0)
    assert not batch.attention_mask.all() and batch.attention_mask.any(1).all()  # padding occurs, no empty row
    ids, labels = data.split_tensors("train")
    assert torch.equal(ids[batch.index], batch.inputs) and torch.equal(labels[batch.index], batch.target)


def test_ids_decode_to_the_split_texts_truncated_at_max_length(data):
    ids, labels = data.split_tensors("val")
    for row, text, label in zip(ids, data.split_texts("val"), labels, strict=True):
        assert data.modality.decode(row) == text.split()[:8]
        assert ("good" in text) == bool(label)


def test_example_and_train_inputs_are_training_ids(data):
    assert torch.equal(data.example_input(3), data.split_tensors("train")[0][:3])
    assert data.train_inputs().dtype == torch.long and len(data.train_inputs()) == data.split_sizes()["train"]


def test_vocabulary_comes_from_the_training_split_only():
    dm = FixedSplits(vocab_size=10)
    dm.setup()
    assert "zebra" not in dm.fitted_tokenizer.vocab and "the" not in dm.fitted_tokenizer.vocab
    unk = dm.fitted_tokenizer.unk_id
    assert dm.split_tensors("test")[0][:, :2].tolist() == [[dm.fitted_tokenizer.vocab.index("a"), unk], [unk, 0]]


def test_record_names_the_tokenizer_and_hashes_the_raw_texts():
    word, char = Sentences(tokenizer="word"), Sentences(tokenizer="char", max_length=30)
    rw, rc = word.data_record(), char.data_record()
    assert rw["tokenizer"]["kind"] == "word" and rc["tokenizer"]["kind"] == "char"
    assert rw["tokenizer"]["vocab_sha256"] != rc["tokenizer"]["vocab_sha256"]
    assert rw["args"]["tokenizer"] == "word" and rw["args"]["max_length"] == 8
    assert rw["fingerprints"] == rc["fingerprints"]  # the same sentences, whatever the tokenizer
    assert Sentences().data_record()["tokenizer"] == rw["tokenizer"]  # deterministic


def test_teacher_trained_on_another_seed_is_caught_as_overlap():
    student, teacher = Sentences(seed=0), Sentences(seed=1)
    assert teacher_data_overlap([student.data_record()], Sentences(seed=0)) is None
    message = teacher_data_overlap([teacher.data_record()], student)
    assert message is not None and "seed=1" in message


def test_validation_reuses_the_test_split_when_val_fraction_is_zero():
    dm = Sentences(val_fraction=0.0)
    assert torch.equal(dm.split_tensors("val")[0], dm.split_tensors("test")[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tokenizer": "bytes"}, "valid tokenizers are: char, word, bpe"),
        ({"max_length": 0}, "max_length must be"),
        ({"test_fraction": 0.9}, "test_fraction"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sentences(**kwargs)


def test_a_teacher_of_another_vocabulary_is_named_in_one_line():
    from kdlight.data.text import vocabulary_mismatch

    own = {"tokenizer": {"kind": "word", "vocab_size": 64, "vocab_sha256": "a" * 64}}
    same = [{"tokenizer": dict(own["tokenizer"]), "checkpoint": "t.ckpt"}]
    other = [{"tokenizer": {"kind": "bpe", "vocab_size": 64, "vocab_sha256": "b" * 64}, "checkpoint": "t.ckpt"}]
    assert vocabulary_mismatch(same, own) is None
    assert vocabulary_mismatch([{}], own) is None and vocabulary_mismatch(other, None) is None
    message = vocabulary_mismatch(other, own)
    assert message.startswith("teacher_checkpoint t.ckpt was trained on the token ids of another vocabulary (bpe")
    assert "\n" not in message
