"""context_attributions: completeness, Captum and autograd references, causal zeros, refusals."""

from __future__ import annotations

import captum.attr
import pytest
import torch
from torch import nn

from kdlight.explain.attribution.context_tokens import CONTEXT_METHODS, context_attributions
from kdlight.models.causal_lm import CausalTransformer, HFCausalLM

VOCAB, LENGTH, PAD, REFERENCE = 40, 12, 0, 5


def causal_transformer() -> nn.Module:
    return CausalTransformer(VOCAB, d_model=32, depth=2, heads=4, max_length=16, pad_token_id=PAD)


def gpt2() -> nn.Module:
    return HFCausalLM("gpt2", vocab_size=VOCAB, max_length=16, hidden_size=32, num_hidden_layers=2, pad_token_id=PAD)


MODELS = {"causal_transformer": causal_transformer, "gpt2": gpt2}


@pytest.fixture(params=list(MODELS))
def model(request) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def probes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids [3, LENGTH] (the last row right-padded after 8 tokens), a position and a target per row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(REFERENCE + 1, VOCAB, (3, LENGTH), generator=g)
    ids[2, 8:] = PAD
    return ids, torch.tensor([4, LENGTH - 1, 7]), torch.tensor([3, 9, 30])


def log_prob(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(ids)[torch.arange(len(ids)), positions]
    return torch.log_softmax(logits, -1)[torch.arange(len(ids)), targets]


def context(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return (torch.arange(ids.shape[1]) <= positions[:, None]) & (ids != PAD)


def test_integrated_gradients_is_complete(model):
    """Sum over the context = log p(target | x) - log p(target | every token -> the reference)."""
    ids, positions, targets = probes()
    maps = context_attributions(model, ids, positions, targets, n_steps=64, reference_id=REFERENCE)
    with torch.no_grad():
        reference = ids.masked_fill(ids != PAD, REFERENCE)
        expected = log_prob(model, ids, positions, targets) - log_prob(model, reference, positions, targets)
    torch.testing.assert_close(maps.sum(1), expected, atol=2e-3, rtol=2e-2)


def test_integrated_gradients_equals_a_direct_captum_call(model):
    ids, positions, targets = probes()
    maps = context_attributions(model, ids, positions, targets, n_steps=8, reference_id=REFERENCE)

    def forward(x, at, target):
        return torch.log_softmax(model(x)[torch.arange(len(x)), at], -1).gather(1, target[:, None]).squeeze(1)

    ig = captum.attr.LayerIntegratedGradients(forward, model.get_input_embeddings())
    baselines = torch.where(ids != PAD, torch.full_like(ids, REFERENCE), ids)
    raw = ig.attribute(ids, baselines=baselines, additional_forward_args=(positions, targets), n_steps=8).sum(-1)
    torch.testing.assert_close(maps, raw * context(ids, positions), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["input_x_gradient", "saliency"])
def test_gradient_methods_match_autograd(model, method):
    """Embedding x gradient summed per token, and the gradient's L2 norm per token, by plain autograd."""
    ids, positions, targets = probes()
    maps = context_attributions(model, ids, positions, targets, method)
    embedded = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    handle = model.get_input_embeddings().register_forward_hook(lambda *_: embedded)
    try:
        (grad,) = torch.autograd.grad(log_prob(model, ids, positions, targets).sum(), embedded)
    finally:
        handle.remove()
    expected = (embedded * grad).sum(-1) if method == "input_x_gradient" else grad.norm(dim=-1)
    torch.testing.assert_close(maps, expected.detach() * context(ids, positions), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", list(CONTEXT_METHODS))
def test_later_tokens_and_padding_get_exactly_zero_and_change_nothing(model, method):
    ids, positions, targets = probes()
    maps = context_attributions(model, ids, positions, targets, method, n_steps=4)
    assert (maps[~context(ids, positions)] == 0).all()
    assert maps[context(ids, positions)].abs().sum() > 0
    later = torch.arange(LENGTH) > positions[:, None]
    changed = torch.where(later & (ids != PAD), (ids + 7) % (VOCAB - 1) + 1, ids)  # other future tokens
    torch.testing.assert_close(context_attributions(model, changed, positions, targets, method, n_steps=4), maps)


def test_logit_score_is_complete_too():
    torch.manual_seed(0)
    model = causal_transformer().eval()
    ids, positions, targets = probes()
    maps = context_attributions(model, ids, positions, targets, n_steps=64, reference_id=REFERENCE, score="logit")
    with torch.no_grad():
        reference = ids.masked_fill(ids != PAD, REFERENCE)
        rows = torch.arange(len(ids))
        expected = model(ids)[rows, positions, targets] - model(reference)[rows, positions, targets]
    torch.testing.assert_close(maps.sum(1), expected, atol=2e-3, rtol=2e-2)


def test_runs_under_inference_mode_like_trainer_validate():
    torch.manual_seed(0)
    model = causal_transformer().eval()
    ids, positions, targets = probes()
    expected = context_attributions(model, ids, positions, targets, n_steps=4)
    with torch.inference_mode():
        ids_i, positions_i, targets_i = ids.clone(), positions.clone(), targets.clone()
        maps = context_attributions(model, ids_i, positions_i, targets_i, n_steps=4)
    torch.testing.assert_close(maps, expected)


class Bidirectional(nn.Module):
    """Not causal: every position sees the mean embedding of the whole sequence."""

    vocab_size, pad_token_id, max_length = VOCAB, PAD, None

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids).mean(1, keepdim=True).expand(-1, ids.shape[1], -1))


def test_refusals_are_one_line():
    torch.manual_seed(0)
    model = causal_transformer().eval()
    ids, positions, targets = probes()
    cases = [
        (dict(method="occlusion"), "not supported for context attribution; valid methods: integrated_gradients"),
        (dict(positions=torch.tensor([4, LENGTH, 7])), "outside the sequence"),
        (dict(positions=torch.tensor([4, 5, 9])), "is padding"),
        (dict(score="prob"), "valid scores: log_prob, logit"),
        (dict(model=Bidirectional()), "depends on later tokens"),
    ]
    for change, message in cases:
        args = dict(model=model, ids=ids, positions=positions, targets=targets) | change
        with pytest.raises(ValueError, match=message) as err:
            context_attributions(**args)
        assert "\n" not in str(err.value)
