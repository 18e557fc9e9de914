"""The Text modality: settings, id checks, padding, feature groups, replacement, decoding, figures."""

from __future__ import annotations

import html
import re
import time

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from kdlight.core.modality import Text
from kdlight.core.modality.text_drawing import MAX_TOKENS_SHOWN
from kdlight.explain.plots import explanation_figure, explanation_html, explanation_image

TOKENS = ("<pad>", "<unk>", "good", "bad", "<b>&\"'", "tab\there", *[f"w{i}" for i in range(6, 40)])
TEXT = Text(len(TOKENS), pad_id=0, reference_id=1, tokens=TOKENS)


def _rgb(value: float) -> tuple[int, ...]:
    """The colour of ``value`` on ``[-1, 1]``, as the figures draw it."""
    return tuple(int(c) for c in np.round(np.asarray(matplotlib.colormaps["RdBu_r"]((value + 1) / 2)[:3]) * 255))


# --------------------------------------------------------------------------------------------
# settings, shapes and ids


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocab_size": 1}, "vocab_size must be >= 2"),
        ({"vocab_size": 5, "pad_id": -1}, "pad_id must be an integer >= 0"),
        ({"vocab_size": 5, "pad_id": 5}, r"pad_id=5 is outside the vocabulary \[0, 5\)"),
        ({"vocab_size": 5, "reference_id": 7}, r"reference_id=7 is outside the vocabulary \[0, 5\)"),
        ({"vocab_size": 5, "tokens": ("a", "b")}, "tokens lists 2 tokens for vocab_size=5"),
        ({"vocab_size": True}, "vocab_size must be an integer"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Text(**kwargs)


def test_reference_defaults_to_padding_and_shapes_are_checked():
    assert Text(10, pad_id=3).reference_id == 3 and TEXT.reference_id == 1
    assert TEXT.num_features((17,)) == 17
    Text(10, max_length=8).check((2, 8))
    with pytest.raises(ValueError, match="text inputs are 9 tokens long but max_length is 8"):
        Text(10, max_length=8).check((2, 9))
    with pytest.raises(ValueError, match=r"^text inputs must be \[N, T\], got shape \[2, 3, 4\]$"):
        TEXT.check((2, 3, 4))


def test_check_ids_refuses_floats_ids_outside_the_vocabulary_and_a_wrong_mask():
    ids = torch.tensor([[2, 3, 0], [4, 0, 0]])
    TEXT.check_ids(ids, ids != 0)
    with pytest.raises(ValueError, match="integer token ids, got dtype torch.float32"):
        TEXT.check_ids(ids.float())
    with pytest.raises(ValueError, match=rf"token id {len(TOKENS)} is outside the vocabulary"):
        TEXT.check_ids(torch.tensor([[2, len(TOKENS)]]))
    with pytest.raises(ValueError, match="token id -1 is outside"):
        TEXT.check_ids(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \[2, 2\] but the token ids \[2, 3\]"):
        TEXT.check_ids(ids, torch.ones(2, 2))
    with pytest.raises(ValueError, match="attention_mask disagrees with the padding"):
        TEXT.check_ids(ids, torch.ones_like(ids))


def test_valid_reference_and_replace_keep_padding_padding():
    ids = torch.tensor([[2, 3, 4, 0], [5, 0, 0, 0]])
    assert torch.equal(TEXT.valid(ids), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool))
    reference = TEXT.reference(ids)
    assert reference.dtype == torch.int64 and torch.equal(reference, torch.ones(1, 4, dtype=torch.long))
    removed = torch.tensor([[True, False, True, True], [True, True, False, False]])
    expected = torch.tensor([[1, 3, 1, 0], [1, 0, 0, 0]])  # removed real tokens -> reference, padding stays
    assert torch.equal(TEXT.replace(ids, removed), expected)
    assert torch.equal(TEXT.replace(ids, torch.tensor([True])), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]))


def test_feature_groups_windows_and_positions_are_per_token():
    ids = torch.zeros(2, 7, dtype=torch.long)
    assert torch.equal(TEXT.feature_mask(ids), torch.arange(7).view(1, 7))
    assert torch.equal(TEXT.feature_mask(ids, patch_size=3), torch.tensor([[0, 0, 0, 1, 1, 1, 2]]))
    assert TEXT.occlusion_window((7,), None) == ((1,), (1,)) and TEXT.occlusion_window((7,), 2) == ((2,), (2,))
    with pytest.raises(ValueError, match="patch_size must be None or an integer >= 1"):
        TEXT.feature_mask(ids, patch_size=0)
    maps = torch.randn(2, 7)
    assert torch.equal(TEXT.position_scores(maps), maps)
    moved = torch.rand(3, 7) > 0.5
    assert torch.equal(TEXT.position_mask(moved, (7,)), moved)


def test_decode_gives_the_vocabulary_strings_of_the_real_tokens():
    assert TEXT.decode(torch.tensor([2, 0, 3, 0])) == ["good", "bad"]
    assert TEXT.decode([4, 1]) == ["<b>&\"'", "<unk>"]
    assert Text(9).decode([3, 0, 8]) == ["3", "8"]  # no vocabulary: the ids


# --------------------------------------------------------------------------------------------
# figures


def _sentences(n: int = 8, length: int = 40, seed: int = 0):
    g = np.random.default_rng(seed)
    ids = g.integers(2, len(TOKENS), size=(n, length + 6))
    for i in range(n):
        ids[i, length - i :] = 0  # padding of various lengths
    t, s = g.normal(size=ids.shape).astype(np.float32), g.normal(size=ids.shape).astype(np.float32)
    return ids, t, s


def test_padding_is_never_drawn_and_more_of_it_changes_nothing():
    ids, t, s = _sentences()
    labels = [f"y={i % 2} t=1 s=0" for i in range(len(ids))]
    image = explanation_image(ids, t, s, labels=labels, title="ig", modality=TEXT)
    page = explanation_html(ids, t, s, labels=labels, title="ig", modality=TEXT)
    more = lambda a, v: np.concatenate([a, np.full((len(a), 9), v, dtype=a.dtype)], 1)  # noqa: E731
    longer = (more(ids, 0), more(t, 50.0), more(s, -50.0))  # garbage maps at the padding
    assert np.array_equal(explanation_image(*longer, labels=labels, title="ig", modality=TEXT), image)
    assert explanation_html(*longer, labels=labels, title="ig", modality=TEXT) == page
    assert image.dtype == np.uint8 and image.shape[2] == 3


def test_tokens_are_shaded_red_for_positive_and_blue_for_negative_on_a_shared_row_scale():
    ids = np.array([[2, 3, 6, 0]])
    t = np.array([[2.0, -2.0, 0.0, 9.0]], dtype=np.float32)  # the row's limit is 2 (padding ignored)
    s = np.array([[1.0, 0.0, -1.0, 0.0]], dtype=np.float32)
    pixels = {tuple(p) for p in explanation_image(ids, t, s, modality=TEXT).reshape(-1, 3)}
    assert {_rgb(1.0), _rgb(-1.0), _rgb(0.5), _rgb(-0.5)} <= pixels  # teacher +-limit, student +-limit/2
    page = explanation_html(ids, t, s, modality=TEXT)
    spans = re.findall(r'background:#(\w{6});color:(\w+)" title="(\w+): ([^"]+)">([^<]*)<', page)
    assert [(role, float(v), word) for _, _, role, v, word in spans] == [
        ("teacher", 2.0, "good"),
        ("teacher", -2.0, "bad"),
        ("teacher", 0.0, "w6"),
        ("student", 1.0, "good"),
        ("student", 0.0, "bad"),
        ("student", -1.0, "w6"),
    ]
    assert [tuple(bytes.fromhex(c)) for c, *_ in spans] == [_rgb(v) for v in (1, -1, 0, 0.5, 0, -0.5)]
    assert spans[0][1] == "white" and spans[2][1] == "black"  # dark shades get white text


def test_html_is_self_contained_and_escaped():
    ids = np.array([[4, 5, 2, 0]])
    page = explanation_html(ids, np.ones((1, 4)), -np.ones((1, 4)), labels=["y=<1>"], title="a & b", modality=TEXT)
    assert "&lt;b&gt;&amp;&quot;&#x27;" in page and "<b>&\"'" not in page
    assert "tab\\there" in page  # control characters shown escaped
    assert "y=&lt;1&gt;" in page and "a &amp; b" in page
    assert not re.search(r"(src|href)=", page)  # nothing to fetch
    with pytest.raises(ValueError, match="tabular inputs have no HTML figure"):
        from kdlight.core.modality import Tabular

        explanation_html(np.ones((1, 3)), np.ones((1, 3)), np.ones((1, 3)), modality=Tabular())


def test_long_sentences_are_cut_with_an_ellipsis_in_the_png_only():
    ids, t, s = _sentences(n=1, length=200)
    t[:, MAX_TOKENS_SHOWN:], s[:, MAX_TOKENS_SHOWN:] = 0.1, 0.1  # the cut tokens do not set the scale
    cut = explanation_image(ids, t, s, modality=TEXT)
    other = ids.copy()
    other[:, MAX_TOKENS_SHOWN:200] = 7  # different tokens beyond the cut: the same picture
    assert np.array_equal(explanation_image(other, t, s, modality=TEXT), cut)
    assert explanation_html(ids, t, s, modality=TEXT).count('class="kd-tok"') == 2 * 200  # every token


def test_figure_is_the_image_and_draws_fast():
    ids, t, s = _sentences()
    labels = [f"y={i % 2} t=1 s=0" for i in range(len(ids))]
    explanation_image(ids, t, s, labels=labels, modality=TEXT)  # fonts loaded
    start = time.perf_counter()
    image = explanation_image(ids, t, s, labels=labels, title="ig (val, epoch 3)", modality=TEXT)
    assert time.perf_counter() - start < 1.0  # about 0.03 s for 8 probes x 2 rows of 40 tokens
    fig = explanation_figure(ids, t, s, labels=labels, title="ig (val, epoch 3)", modality=TEXT)
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and np.array_equal(fig.axes[0].images[0].get_array(), image)
    assert html.unescape(explanation_html(ids, t, s, labels=labels, modality=TEXT)).count("y=1 t=1 s=0") == 4
