"""Causal LMs (THE LM CONVENTION): ids [B, T] -> next-token logits [B, T, V], causal, padding-blind.

Every token model of MODELS without ``num_classes`` is a causal LM and gets the contract below.
"""

from __future__ import annotations

import inspect
import socket

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients
from torch import nn

from kdlight.models import MODELS, CausalTransformer, HFCausalLM, check_lm_models
from kdlight.training.taps import FeatureTaps

VOCAB, D, DEPTH, HEADS, LENGTH = 40, 16, 2, 4, 16
LM_MODELS = sorted(
    name
    for name, cls in MODELS.items()
    if hasattr(cls, "get_input_embeddings") and "num_classes" not in inspect.signature(cls).parameters
)
#: small settings per registry entry (a new LM adds its entry here)
SMALL = {
    "causal_transformer": dict(d_model=D, depth=DEPTH, heads=HEADS),
    "hf_causal_lm": dict(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS),
}
HF_TYPES = ["gpt2", "llama"]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Building a model must never open a connection."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a causal LM tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name](**{"vocab_size": VOCAB, "max_length": LENGTH, **SMALL[name], **kwargs}).eval()


def hf(model_type: str) -> HFCausalLM:
    return build("hf_causal_lm", model_type=model_type)


def token_ids() -> torch.Tensor:
    """Two right-padded sequences (pad id 0) of 5 and 7 tokens."""
    return torch.tensor([[5, 7, 9, 3, 12, 0, 0], [4, 8, 2, 6, 11, 1, 30]])


def each_model() -> list[tuple[str, dict]]:
    return [("causal_transformer", {})] + [("hf_causal_lm", {"model_type": t}) for t in HF_TYPES]


models = pytest.mark.parametrize(("name", "kwargs"), each_model(), ids=["causal_transformer", *HF_TYPES])


def test_every_causal_lm_in_the_registry_is_covered() -> None:
    assert LM_MODELS == ["causal_transformer", "hf_causal_lm"]
    assert MODELS["causal_transformer"] is CausalTransformer and MODELS["hf_causal_lm"] is HFCausalLM
    for name in LM_MODELS:
        params = inspect.signature(MODELS[name]).parameters
        assert "vocab_size" in params and "pad_token_id" in params and "max_length" in params
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params.values())


@models
def test_shapes_and_text_attributes(name: str, kwargs: dict) -> None:
    net, ids = build(name, **kwargs), token_ids()
    logits = net(ids)
    assert logits.shape == (2, 7, VOCAB) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (net.vocab_size, net.pad_token_id, net.max_length) == (VOCAB, 0, LENGTH)
    assert isinstance(net.get_input_embeddings(), nn.Embedding)
    assert net.get_input_embeddings().num_embeddings == VOCAB


@models
def test_logits_at_t_do_not_see_later_tokens(name: str, kwargs: dict) -> None:
    """Changing tokens t+1.. leaves the logits at <= t unchanged; a prefix alone gives the same logits."""
    net, ids = build(name, **kwargs), token_ids()
    logits = net(ids)
    for t in range(ids.shape[1] - 1):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(
            1, VOCAB, changed[:, t + 1 :].shape, generator=torch.Generator().manual_seed(t)
        )
        other = net(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])  # later positions do change
    torch.testing.assert_close(net(ids[:, :3]), logits[:, :3], atol=1e-5, rtol=1e-5)


@models
def test_padding_after_a_sequence_changes_nothing_before_it(name: str, kwargs: dict) -> None:
    net, ids = build(name, **kwargs), token_ids()
    logits = net(ids)
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    longer = net(padded)
    torch.testing.assert_close(longer[:, :7], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net(ids[:1, :5]), logits[:1, :5], atol=1e-5, rtol=1e-5)  # no padding at all
    assert torch.isfinite(longer).all()  # padded query positions stay finite


@models
def test_gradients_reach_every_parameter(name: str, kwargs: dict) -> None:
    net, ids = build(name, **kwargs), token_ids()
    net.train()
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1).masked_fill(ids.roll(-1, 1) == 0, -100)
    F.cross_entropy(net(ids).flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


@models
def test_attention_taps_are_causal_and_skip_padding(name: str, kwargs: dict) -> None:
    net, ids = build(name, **kwargs), token_ids()
    fused = net(ids)
    names = [f"hidden_states.{i}" for i in range(DEPTH + 1)] + [f"attentions.{i}" for i in range(DEPTH)]
    with FeatureTaps(net, names) as taps:
        logits = net(ids)
        features = taps.pop()
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=1e-5)  # explicit probabilities: same logits
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)
    for i in range(DEPTH + 1):
        assert features[f"hidden_states.{i}"].shape == (2, 7, D)
    for i in range(DEPTH):
        probs = features[f"attentions.{i}"]
        assert probs.shape == (2, HEADS, 7, 7)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, HEADS, 7))
        assert probs[:, :, blocked].abs().max() == 0  # no weight on later tokens
        assert probs[0, :, :, 5:].abs().max() == 0  # nor on padded keys


def test_own_attention_matches_torch_multihead_attention_with_a_causal_mask() -> None:
    net, ids = build("causal_transformer"), token_ids()
    attention = net.layers[0].attention
    reference = nn.MultiheadAttention(D, HEADS, batch_first=True)
    reference.in_proj_weight.data.copy_(attention.qkv.weight)
    reference.in_proj_bias.data.copy_(attention.qkv.bias)
    reference.out_proj.load_state_dict(attention.out.state_dict())
    x = torch.randn(2, 7, D)
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    expected, expected_probs = reference(
        x, x, x, attn_mask=causal, key_padding_mask=ids == 0, average_attn_weights=False
    )
    blocked = causal[None, None] | (ids == 0)[:, None, None, :]
    mixed, probs = attention(x, blocked)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(probs, expected_probs)
    torch.testing.assert_close(attention(x, blocked, need_probs=False)[0], expected)


def test_context_attributions_of_a_next_token_are_zero_on_later_tokens() -> None:
    """Layer IG on the embeddings for position 3's prediction: complete, and nothing after position 3."""
    net, ids = build("causal_transformer"), token_ids()
    reference = torch.where(ids == 0, 0, 1)
    position, target = 3, 7

    def next_token_logit(x: torch.Tensor) -> torch.Tensor:
        return net(x)[:, position, target]

    lig = LayerIntegratedGradients(next_token_logit, net.get_input_embeddings())
    attr = lig.attribute(ids, baselines=reference, n_steps=64).sum(-1)
    assert attr[:, position + 1 :].abs().max() == 0
    gap = next_token_logit(ids) - next_token_logit(reference)
    torch.testing.assert_close(attr.sum(1), gap, atol=0.02 * gap.abs().max().item(), rtol=0)


def test_hf_models_are_the_requested_families_with_random_weights() -> None:
    gpt2, llama = hf("gpt2"), hf("llama")
    assert type(gpt2.hf).__name__ == "GPT2LMHeadModel" and type(llama.hf).__name__ == "LlamaForCausalLM"
    assert (gpt2.hf.config.n_embd, gpt2.hf.config.n_layer, gpt2.hf.config.n_positions) == (D, DEPTH, LENGTH)
    assert (llama.hf.config.intermediate_size, llama.hf.config.num_attention_heads) == (4 * D, HEADS)
    assert gpt2.hf.config.eos_token_id is None  # GPT-2's 50256 lies outside this vocabulary
    custom = build("hf_causal_lm", model_type="llama", intermediate_size=24, config={"rms_norm_eps": 1e-3})
    assert (custom.hf.config.intermediate_size, custom.hf.config.rms_norm_eps) == (24, 1e-3)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: build("causal_transformer")(torch.zeros(1, 3)), "token ids"),
        (lambda: build("causal_transformer")(torch.ones(1, LENGTH + 1, dtype=torch.long)), f"max_length={LENGTH}"),
        (lambda: hf("gpt2")(torch.ones(1, LENGTH + 1, dtype=torch.long)), f"max_length={LENGTH}"),
        (lambda: build("causal_transformer", pad_token_id=VOCAB), "outside the vocabulary"),
        (lambda: build("causal_transformer", d_model=10), "multiple of heads"),
        (lambda: HFCausalLM("gpt2"), "needs vocab_size"),
        (lambda: hf("bert_typo"), "valid ones are: .*gpt2.*llama"),
    ],
)
def test_bad_inputs_and_settings_are_one_line_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        make()
    assert "\n" not in str(error.value)


def test_check_lm_models_accepts_fitting_models_and_names_each_mismatch() -> None:
    teacher, student = hf("llama"), build("causal_transformer")
    check_lm_models(VOCAB, 0, LENGTH, teacher=teacher, student=student)
    cases = [
        (dict(student=build("causal_transformer", vocab_size=VOCAB + 2)), "teacher and student have different"),
        (dict(student=build("causal_transformer", pad_token_id=1)), "pad_token_id=1 .* pad_id=0"),
        (dict(student=build("causal_transformer", max_length=8)), "max_length=8 .* up to 16"),
        (dict(student=nn.Linear(3, 3)), "is not a text model"),
    ]
    for models, match in cases:
        with pytest.raises(ValueError, match=match) as error:
            check_lm_models(VOCAB, 0, LENGTH, teacher=teacher, **models)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=f"has {VOCAB} token embeddings but the data's tokenizer has 50"):
        check_lm_models(50, 0, LENGTH, teacher=teacher)
