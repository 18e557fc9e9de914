"""TransformerClassifier: padding never matters, taps hold what they promise, attention is standard MHA."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from kdlight.models import MODELS, TransformerClassifier
from kdlight.training.taps import FeatureTaps

VOCAB, CLASSES, D, DEPTH, HEADS = 30, 3, 16, 2, 4


def model(**kwargs) -> TransformerClassifier:
    torch.manual_seed(0)
    settings = dict(num_classes=CLASSES, d_model=D, depth=DEPTH, heads=HEADS, max_length=12, dropout=0.0)
    return TransformerClassifier(VOCAB, **{**settings, **kwargs}).eval()


def padded_ids() -> torch.Tensor:
    ids = torch.tensor([[5, 7, 9, 3, 0, 0], [4, 8, 2, 6, 11, 1]])
    return ids


def test_registered_in_models() -> None:
    assert MODELS["transformer"] is TransformerClassifier


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_logits_do_not_depend_on_trailing_padding(pooling: str) -> None:
    net, ids = model(pooling=pooling), padded_ids()
    more = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(net(ids), net(more))
    torch.testing.assert_close(net(ids[:1, :4]), net(ids)[:1])


def test_taps_shapes_and_mean_pooling_of_the_last_hidden_state() -> None:
    net, ids = model(), padded_ids()
    fused = net(ids)  # no attention tap: PyTorch's fused attention
    names = [f"hidden_states.{i}" for i in range(DEPTH + 1)] + [f"attentions.{i}" for i in range(DEPTH)]
    with FeatureTaps(net, names) as taps:
        logits = net(ids)
        features = taps.pop()
    for i in range(DEPTH + 1):
        assert features[f"hidden_states.{i}"].shape == (2, 6, D)
    for i in range(DEPTH):
        probs = features[f"attentions.{i}"]
        assert probs.shape == (2, HEADS, 6, 6)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, HEADS, 6))
        assert probs[0, :, :, 4:].abs().max() == 0  # padded keys get no weight
    torch.testing.assert_close(logits, fused)  # explicit probabilities: the same logits
    last = features[f"hidden_states.{DEPTH}"]
    pooled = torch.stack([last[0, :4].mean(0), last[1].mean(0)])
    torch.testing.assert_close(logits, net.classifier(pooled))


def test_attention_matches_torch_multihead_attention() -> None:
    """The own attention equals nn.MultiheadAttention loaded with the same weights and key mask."""
    net, ids = model(), padded_ids()
    attention = net.layers[0].attention
    reference = nn.MultiheadAttention(D, HEADS, batch_first=True)
    reference.in_proj_weight.data.copy_(attention.qkv.weight)
    reference.in_proj_bias.data.copy_(attention.qkv.bias)
    reference.out_proj.load_state_dict(attention.out.state_dict())
    x = torch.randn(2, 6, D)
    padding = ids == 0
    expected, expected_probs = reference(x, x, x, key_padding_mask=padding, average_attn_weights=False)
    mixed, probs = attention(x, padding)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(probs, expected_probs)
    fused, no_probs = attention(x, padding, need_probs=False)
    torch.testing.assert_close(fused, expected)
    assert no_probs is None


def test_layer_integrated_gradients_on_the_embeddings_are_complete() -> None:
    """Attributions sum to f(x) - f(reference) with an UNK reference that keeps the padding (the mask)."""
    net, ids = model(), padded_ids()
    reference = torch.where(ids == 0, 0, 1)
    lig = LayerIntegratedGradients(net, net.get_input_embeddings())
    attr, delta = lig.attribute(ids, baselines=reference, target=1, n_steps=64, return_convergence_delta=True)
    assert attr.shape == (2, 6, D)
    gap = net(ids)[:, 1] - net(reference)[:, 1]
    torch.testing.assert_close(attr.sum((1, 2)), gap, atol=0.02 * gap.abs().max().item(), rtol=0)
    assert delta.abs().max() < 0.02 * gap.abs().max()


def test_gradients_reach_every_parameter() -> None:
    net = model()
    net.train()
    net(padded_ids()).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: model()(torch.zeros(1, 3)), "token ids"),
        (lambda: model()(torch.ones(1, 13, dtype=torch.long)), "max_length=12"),
        (lambda: model(pooling="max"), "pooling must be one of mean, cls"),
        (lambda: model(d_model=10, heads=4), "multiple of heads"),
        (lambda: model(pad_token_id=VOCAB), "outside the vocabulary"),
    ],
)
def test_bad_inputs_and_settings_are_one_line_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        make()
    assert "\n" not in str(error.value)


def test_text_model_attributes() -> None:
    net = model(pad_token_id=1)
    assert (net.vocab_size, net.pad_token_id, net.max_length, net.num_classes) == (VOCAB, 1, 12, CLASSES)
    assert net.gradcam_layer is None and net.get_input_embeddings() is net.embeddings
