"""HFClassifier: transformers models from configs (no download), logits only, the shared tap points."""

from __future__ import annotations

import socket

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from kdlight.models import MODELS, HFClassifier
from kdlight.training.taps import FeatureTaps

VOCAB, CLASSES, DEPTH, HEADS = 40, 3, 2, 4
TYPES = ["bert", "distilbert", "roberta", "gpt2"]


def build(model_type: str, **kwargs) -> HFClassifier:
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, num_classes=CLASSES, hidden_size=16, num_hidden_layers=DEPTH)
    return HFClassifier(model_type, **{**settings, "num_attention_heads": HEADS, **kwargs}).eval()


def padded_ids() -> torch.Tensor:
    return torch.tensor([[5, 7, 9, 3, 0, 0], [4, 8, 2, 6, 11, 1]])


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Building a model must never open a connection."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("HFClassifier tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("model_type", TYPES)
def test_logits_ignore_padding_and_taps_equal_the_library_outputs(model_type: str) -> None:
    net, ids = build(model_type), padded_ids()
    plain = net(ids)
    assert isinstance(plain, torch.Tensor) and plain.shape == (2, CLASSES)
    more = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(net(more), plain, atol=1e-5, rtol=1e-5)

    names = [f"hidden_states.{i}" for i in range(DEPTH + 1)] + [f"attentions.{i}" for i in range(DEPTH)]
    with FeatureTaps(net, names) as taps:
        tapped = net(ids)
        features = taps.pop()
    torch.testing.assert_close(tapped, plain, atol=1e-5, rtol=1e-5)
    net.hf.set_attn_implementation("eager")
    library = net.hf(input_ids=ids, attention_mask=ids != 0, output_hidden_states=True, output_attentions=True)
    for i in range(DEPTH + 1):
        torch.testing.assert_close(features[f"hidden_states.{i}"], library.hidden_states[i])
    for i in range(DEPTH):
        probs = features[f"attentions.{i}"]
        assert probs.shape == (2, HEADS, 6, 6)
        torch.testing.assert_close(probs, library.attentions[i])
        assert probs[0, :, :, 4:].abs().max() == 0  # padded keys get no weight


def test_plain_forward_keeps_the_fast_attention_and_requests_nothing() -> None:
    net, ids = build("bert"), padded_ids()
    fast = net.hf.config._attn_implementation
    with FeatureTaps(net, ["hidden_states.1"]) as taps:
        net(ids)
        assert set(taps.pop()) == {"hidden_states.1"}
        assert net.hf.config._attn_implementation == fast  # hidden states need no eager attention
    with FeatureTaps(net, ["attentions.0"]):
        net(ids)
        assert net.hf.config._attn_implementation == "eager"
    net(ids)
    assert net.hf.config._attn_implementation == fast


def test_text_model_contract_and_config_names() -> None:
    net = build("distilbert", intermediate_size=24, max_length=20, pad_token_id=1)
    assert (net.vocab_size, net.pad_token_id, net.max_length, net.num_classes) == (VOCAB, 1, 20, CLASSES)
    assert net.get_input_embeddings() is net.hf.distilbert.embeddings.word_embeddings
    assert (net.hf.config.dim, net.hf.config.n_layers, net.hf.config.hidden_dim) == (16, DEPTH, 24)
    assert MODELS["hf"] is HFClassifier and net.gradcam_layer is None
    roberta = build("roberta", max_length=20, pad_token_id=1)
    full = torch.randint(2, VOCAB, (1, 20))
    assert roberta(full).shape == (1, CLASSES)  # position ids start after the padding id


def test_config_overrides_from_yaml_class_path() -> None:
    parser = ArgumentParser()
    parser.add_argument("--model", type=nn.Module)
    config = parser.parse_string(
        "model:\n  class_path: kdlight.models.HFClassifier\n  init_args:\n    model_type: bert\n"
        "    vocab_size: 40\n    hidden_size: 16\n    config: {hidden_dropout_prob: 0.0}\n"
    )
    net = parser.instantiate_classes(config).model
    assert isinstance(net, HFClassifier) and net.hf.config.hidden_dropout_prob == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model_type="bret"), "unknown model_type 'bret'.*valid ones are: .*bert"),
        (dict(vocab_size=None), "needs vocab_size"),
        (dict(pad_token_id=VOCAB), "outside the vocabulary"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, match: str) -> None:
    model_type = kwargs.pop("model_type", "bert")
    with pytest.raises(ValueError, match=match) as error:
        build(model_type, **kwargs)
    assert "\n" not in str(error.value)


def test_float_and_too_long_inputs_are_refused() -> None:
    net = build("bert", max_length=8)
    with pytest.raises(ValueError, match="token ids"):
        net(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="max_length=8"):
        net(torch.ones(1, 9, dtype=torch.long))


def test_layer_integrated_gradients_on_the_input_embeddings_are_complete() -> None:
    from captum.attr import LayerIntegratedGradients

    net, ids = build("bert", config={"hidden_dropout_prob": 0.0}), padded_ids()
    reference = torch.where(ids == 0, 0, 1)  # UNK for real tokens; padding (the mask) unchanged
    lig = LayerIntegratedGradients(net, net.get_input_embeddings())
    attr = lig.attribute(ids, baselines=reference, target=2, n_steps=64)
    gap = net(ids)[:, 2] - net(reference)[:, 2]
    torch.testing.assert_close(attr.sum((1, 2)), gap, atol=0.02 * gap.abs().max().item(), rtol=0)
