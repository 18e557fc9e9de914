"""PythonSourceCorpus: split by file, shifted next-token labels, determinism, byte tokenizer, sizes."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from kdlight.core.batch import as_batch
from kdlight.core.modality import Text
from kdlight.data.byte_tokenizer import ByteTokenizer
from kdlight.data.code_corpus import PythonSourceCorpus
from kdlight.data.lm import chunk_sequence, next_token_labels

#: one distinct non-ASCII letter per synthetic file, so a token shows which file it came from
LETTERS = "αβγδεζηθικλμ"


@pytest.fixture(scope="module")
def corpus() -> PythonSourceCorpus:
    dm = PythonSourceCorpus(batch_size=8)
    dm.setup()
    return dm


@pytest.fixture()
def letters_root(tmp_path: Path) -> Path:
    for k, letter in enumerate(LETTERS):
        (tmp_path / f"m{k:02d}.py").write_text(f"def f{k}():\n    return '{letter * 3}'\n" * (k + 1), encoding="utf-8")
    (tmp_path / "_private.py").write_text("skipped = True\n", encoding="utf-8")
    return tmp_path


def test_no_file_is_in_two_splits_and_every_file_is_used(corpus):
    files = {split: corpus.split_files(split) for split in ("train", "val", "test")}
    assert all(files.values())
    assert not set(files["train"]) & set(files["val"]) and not set(files["train"]) & set(files["test"])
    assert not set(files["val"]) & set(files["test"])
    stdlib = sorted(p.name for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if not p.name.startswith("_"))
    assert sorted(sum(files.values(), [])) == stdlib[:16]


def test_byte_chunks_hold_each_split_files_text_in_order(corpus):
    tokenizer = corpus.fitted_tokenizer
    root = Path(sysconfig.get_paths()["stdlib"])
    for split in ("train", "test"):
        ids, _ = corpus.split_tensors(split)
        expected = "".join((root / name).read_bytes().decode("utf-8") for name in corpus.split_files(split))
        assert tokenizer.decode_text(ids.flatten()) == expected
        # every file is <bos> bytes <eos>; a last chunk holding only <eos> is dropped
        n = [len((root / name).read_bytes()) + 2 for name in corpus.split_files(split)]
        assert corpus.token_counts()[split] == sum(k - (k % 128 == 1) for k in n)


def test_labels_are_inputs_shifted_with_ignore_at_padding_and_last(corpus):
    ids, labels = corpus.split_tensors("val")
    assert ids.shape == labels.shape == (len(ids), 128) and ids.dtype == labels.dtype == torch.long
    for row, target in zip(ids, labels, strict=True):
        length = int((row != corpus.pad_id).sum())
        assert torch.equal(row[length:], torch.zeros(128 - length, dtype=torch.long))  # right-padded
        assert torch.equal(target[: length - 1], row[1:length])
        assert (target[length - 1 :] == -100).all()
    assert (labels[:, -1] == -100).all() and (ids[:, :-1] != 0).sum() > 0


def test_loader_batches_follow_the_lm_convention(corpus):
    raw = next(iter(corpus.train_dataloader()))
    assert set(raw) == {"inputs", "attention_mask", "labels", "index"}
    batch = as_batch(raw)
    ids, labels = corpus.split_tensors("train")
    assert torch.equal(batch.inputs, ids[batch.index]) and torch.equal(raw["labels"], labels[batch.index])
    assert torch.equal(batch.attention_mask, batch.inputs != corpus.pad_id) and batch.target is None


def test_two_builds_are_identical_and_the_seed_changes_the_split(corpus):
    again = PythonSourceCorpus(batch_size=8)
    for split in ("train", "val", "test"):
        assert again.split_files(split) == corpus.split_files(split)
        assert torch.equal(again.split_tensors(split)[0], corpus.split_tensors(split)[0])
    assert again.data_record()["fingerprints"] == corpus.data_record()["fingerprints"]
    assert again.data_record()["corpus"]["files_sha256"] == corpus.data_record()["corpus"]["files_sha256"]
    other = PythonSourceCorpus(seed=1)
    assert other.split_files("test") != corpus.split_files("test")
    assert other.data_record()["corpus"]["files_sha256"] == corpus.data_record()["corpus"]["files_sha256"]


@pytest.mark.skipif(
    sys.version.split()[0] != "3.11.7", reason="the documented sizes are those of Python 3.11.7's stdlib"
)
def test_sizes_match_the_docstring(corpus):
    assert corpus.split_sizes() == {"train": 2096, "val": 477, "test": 452}
    assert corpus.token_counts() == {"train": 267_584, "val": 60_873, "test": 57_709}
    assert [len(corpus.split_files(s)) for s in ("train", "val", "test")] == [10, 3, 3]


def test_modality_and_record_describe_the_vocabulary(corpus):
    text = corpus.modality
    assert isinstance(text, Text) and (text.vocab_size, text.pad_id, text.max_length) == (259, 0, 128)
    assert text.tokens[:4] == ("<pad>", "<bos>", "<eos>", "<0x00>") and text.tokens[3 + ord("a")] == "a"
    assert text.decode(torch.tensor([1, 3 + ord("o"), 3 + ord("k"), 0])) == ["<bos>", "o", "k"]
    record = corpus.data_record()
    assert record["tokenizer"]["kind"] == "byte" and len(record["tokenizer"]["vocab_sha256"]) == 64
    assert record["corpus"]["files"] == 16 and record["sizes"] == corpus.split_sizes()
    assert (corpus.num_classes, corpus.vocab_size, corpus.input_shape) == (259, 259, (128,))


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = ByteTokenizer()
    text = "def f(x):\n\treturn x ** 2  # é, 漢字, 🙂\r\n"
    ids = tokenizer.ids(text)
    assert ids.tolist() == [b + 3 for b in text.encode("utf-8")]
    assert tokenizer.decode_text(ids) == text
    assert tokenizer.decode_text(tokenizer.encode([text, "ab"], max_length=64)[1]) == "ab"
    assert len(set(tokenizer.vocab)) == tokenizer.vocab_size == 259
    assert ByteTokenizer.from_state(tokenizer.state()).vocab == tokenizer.vocab


def test_chunking_and_labels_against_hand_values():
    chunks = chunk_sequence(torch.arange(1, 8), length=3, pad_id=0)  # 7 tokens: the 1-token tail is dropped
    assert chunks.tolist() == [[1, 2, 3], [4, 5, 6]]
    chunks = chunk_sequence(torch.arange(1, 9), length=3, pad_id=0)
    assert chunks.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 0]]
    assert next_token_labels(chunks, pad_id=0).tolist() == [[2, 3, -100], [5, 6, -100], [8, -100, -100]]


def test_bpe_is_fitted_on_the_training_files_only(letters_root):
    dm = PythonSourceCorpus(tokenizer="bpe", vocab_size=300, max_length=16, root=str(letters_root), seed=3)
    vocab = "".join(dm.fitted_tokenizer.vocab)
    train = [int(name[1:3]) for name in dm.split_files("train")]
    held_out = [int(name[1:3]) for s in ("val", "test") for name in dm.split_files(s)]
    assert len(dm.split_files("train")) + len(held_out) == len(LETTERS)  # _private.py is not read
    assert all(LETTERS[k] in vocab for k in train) and not any(LETTERS[k] in vocab for k in held_out)
    assert dm.modality.tokens[:4] == ("<pad>", "<unk>", "<bos>", "<eos>")
    ids, labels = dm.split_tensors("test")
    assert (ids[:, 0] == 2).any() and (ids == 1).any()  # <bos> starts files; held-out letters are <unk>
    assert torch.equal(labels, next_token_labels(ids, 0))


def test_bad_settings_fail_with_one_line():
    with pytest.raises(ValueError, match="valid tokenizers are: byte, bpe"):
        PythonSourceCorpus(tokenizer="word")
    with pytest.raises(ValueError, match="exactly 259 ids"):
        PythonSourceCorpus(vocab_size=300)
    with pytest.raises(ValueError, match="max_files must be an integer >= 3"):
        PythonSourceCorpus(max_files=2)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        PythonSourceCorpus(max_length=1)
    with pytest.raises(ValueError, match="is not a directory"):
        PythonSourceCorpus(root="/no/such/folder").setup()
