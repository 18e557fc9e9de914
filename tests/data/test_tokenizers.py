"""Tokenizers: fixed special ids, round trips, padding/truncation, determinism, state round trip."""

from __future__ import annotations

import json

import pytest
import torch

from kdlight.data.tokenizers import TOKENIZERS, Tokenizer, make_tokenizer

TEXTS = ["The cat sat on the mat.", "A dog sat on a log!", "the cat saw the dog", "cats and dogs"]


@pytest.fixture(params=sorted(TOKENIZERS))
def kind(request) -> str:
    return request.param


def fitted(kind: str, vocab_size: int = 60, **options) -> Tokenizer:
    return make_tokenizer(kind, vocab_size, **options).fit(TEXTS)


def test_vocabulary_starts_with_pad_and_unk_and_has_exactly_vocab_size_entries(kind):
    tok = fitted(kind, special_tokens=["<url>"])
    assert tok.vocab[:3] == ["<pad>", "<unk>", "<url>"]
    assert (tok.pad_id, tok.unk_id) == (0, 1)
    assert len(tok.vocab) == tok.vocab_size == 60
    assert len(set(tok.vocab)) == 60


def test_encoding_pads_with_zero_and_truncates(kind):
    tok = fitted(kind)
    full = tok.encode(["the cat", "the cat sat on the mat"])
    lengths = (full != tok.pad_id).sum(1)
    assert full.dtype == torch.long and full.shape[1] == int(lengths.max())
    assert lengths[0] < lengths[1] and (full[0, int(lengths[0]) :] == 0).all()
    cut = tok.encode(["the cat", "the cat sat on the mat"], max_length=3)
    assert cut.shape == (2, 3) and torch.equal(cut[1], full[1, :3])
    wide = tok.encode(["the cat"], max_length=40)
    assert wide.shape == (1, 40) and torch.equal(wide[0, : int(lengths[0])], full[0, : int(lengths[0])])


@pytest.mark.parametrize(("kind", "expected"), [("word", "the cat sat on the mat ."), ("char", "the cat sat")])
def test_known_texts_round_trip(kind, expected):
    tok = fitted(kind)
    pieces = tok.decode(tok.encode([expected])[0])
    assert (" ".join(pieces) if kind == "word" else "".join(pieces)) == expected
    assert tok.unk_id not in tok.encode([expected])[0].tolist()


def test_bpe_round_trips_training_words_without_unk():
    tok = fitted("bpe", vocab_size=80)
    ids = tok.encode(["the cat sat on the mat"])[0]
    assert tok.unk_id not in ids.tolist()
    assert "".join(tok.decode(ids)) == "thecatsatonthemat"  # whitespace pre-tokenizer drops spaces


def test_word_tokenizer_keeps_the_most_frequent_words_ties_by_string():
    tok = make_tokenizer("word", 6).fit(["b a c", "a b", "a d"])
    assert tok.vocab == ["<pad>", "<unk>", "a", "b", "c", "d"]
    tok = make_tokenizer("word", 4).fit(["b a c", "a b", "a d"])
    assert tok.vocab == ["<pad>", "<unk>", "a", "b"]
    assert tok.encode(["c a"]).tolist() == [[1, 2]]


def test_small_corpus_leaves_unused_slots_no_text_maps_to():
    tok = make_tokenizer("word", 10).fit(["a b"])
    assert tok.vocab[4:] == [f"<unused{k}>" for k in range(6)]
    assert tok.encode(["<unused0> a"]).tolist() == [[1, 2]]  # the slot's name is an unknown word


def test_fitting_is_deterministic(kind):
    assert fitted(kind).vocab == fitted(kind).vocab
    assert torch.equal(fitted(kind).encode(TEXTS), fitted(kind).encode(TEXTS))


def test_state_is_json_and_rebuilds_the_same_tokenizer(kind):
    tok = fitted(kind, special_tokens=["<url>"])
    rebuilt = Tokenizer.from_state(json.loads(json.dumps(tok.state())))
    assert type(rebuilt) is type(tok) and rebuilt.vocab == tok.vocab
    probe = ["the zebra sat <url> on a mat", "dogs!"]
    assert torch.equal(rebuilt.encode(probe, 12), tok.encode(probe, 12))


def test_special_tokens_stay_whole_and_offsets_point_at_the_text(kind):
    tok = fitted(kind, special_tokens=["<url>"])
    text = "cat <url> dog"
    ids, offsets = tok.encode_with_offsets([text], max_length=20)
    pieces = [text[s:e] for s, e in offsets[0].tolist() if s >= 0]
    assert "<url>" in pieces and 2 in ids[0].tolist()
    assert (offsets[0][ids[0] == 0] == -1).all()


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid tokenizers are: char, word, bpe"):
        make_tokenizer("sentencepiece", 100)


def test_encode_before_fit_and_too_small_vocab_are_clear_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        make_tokenizer("word", 10).encode(["a"])
    with pytest.raises(ValueError, match="vocab_size must be"):
        make_tokenizer("word", 2)


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
@pytest.mark.parametrize("special", ["[sep]", "<URL>"])
def test_special_tokens_of_any_spelling_map_to_their_reserved_id(kind, special):
    # "[sep]" is not a <name> marker (the word pattern would split it); "<URL>" has capitals, which
    # lowercasing (word and BPE default) would turn into another string
    tokenizer = make_tokenizer(kind, 60, special_tokens=(special,)).fit([f"a b {special} c", "hello world"])
    ids, offsets = tokenizer.encode_with_offsets([f"hello {special} world"])
    assert tokenizer.vocab[2] == special
    assert (ids[0] == 2).sum() == 1 and 1 not in ids[0].tolist()  # the reserved id, once; no <unk>
    start, end = offsets[0, ids[0].tolist().index(2)].tolist()
    assert f"hello {special} world"[start:end] == special
    if kind != "char":  # the rest of the text is still lowercased
        assert "".join(tokenizer.decode(tokenizer.encode(["HELLO"])[0])) == "hello"
