"""Generation for sequence-level KD and on-policy distillation: decoding, sampling maths, labels, YAML."""

from __future__ import annotations

import jsonargparse
import pytest
import torch
from torch import Tensor, nn

from kdlight.data.lm import IGNORE_INDEX
from kdlight.models import CausalTransformer, HFCausalLM
from kdlight.training.lm_generation import GenerationSettings, generated_batch, prompt_rows, sample_continuations

VOCAB, PAD, EOS = 12, 0, 2


class FixedLogits(nn.Module):
    """Every position predicts the same logits ``[V]``; a toy LM with a known next-token distribution."""

    max_length = None

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, ids: Tensor) -> Tensor:
        return self.logits.expand(*ids.shape, -1)


class Counter(nn.Module):
    """Deterministic toy LM: the next token is ``last + 1`` (mod V), so every decoding path is known."""

    max_length = 16

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.one_hot((ids + 1) % VOCAB, VOCAB).float() * 10.0


def tiny_transformer(**kwargs) -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(VOCAB, d_model=16, depth=2, heads=4, max_length=24, pad_token_id=PAD, **kwargs)


def prompts(batch: int = 3, length: int = 4) -> Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def argmax_loop(model: nn.Module, ids: Tensor, steps: int) -> Tensor:
    """Greedy decoding written out by hand (no eos)."""
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def first_token_counts(model: nn.Module, settings: GenerationSettings, draws: int = 20000) -> Tensor:
    out = sample_continuations(
        model, torch.full((draws, 1), 5), settings, PAD, generator=torch.Generator().manual_seed(0)
    )
    return torch.bincount(out[:, 1], minlength=6).float()


@pytest.mark.parametrize("model", [tiny_transformer(), tiny_transformer(dropout=0.3)], ids=["plain", "dropout"])
def test_greedy_equals_hand_written_argmax(model):
    model.eval()
    expected = argmax_loop(model, prompts(), 6)
    model.train()
    got = sample_continuations(model, prompts(), GenerationSettings(max_new_tokens=6, do_sample=False), PAD)
    assert torch.equal(got, expected)


def test_top_k_one_sampling_equals_greedy():
    model = tiny_transformer()
    greedy = sample_continuations(model, prompts(), GenerationSettings(max_new_tokens=6, do_sample=False), PAD)
    sampled = sample_continuations(
        model, prompts(), GenerationSettings(max_new_tokens=6, top_k=1, temperature=3.0), PAD
    )
    assert torch.equal(sampled, greedy)


def test_sample_frequencies_match_tempered_softmax():
    logits = torch.tensor([-1.0, 0.5, 1.0, 0.0, 2.0, -0.5])
    for temperature in (1.0, 0.5, 2.0):
        counts = first_token_counts(
            FixedLogits(logits.tolist()), GenerationSettings(max_new_tokens=1, temperature=temperature)
        )
        expected = torch.softmax(logits / temperature, -1)
        assert (counts / counts.sum() - expected).abs().max() < 0.015


def test_top_k_and_top_p_keep_exactly_the_expected_support():
    probs = torch.tensor([0.05, 0.30, 0.10, 0.15, 0.40, 0.0001])  # sorted: 4 (.40), 1 (.30), 3 (.15), 2 (.10), 0, 5
    model = FixedLogits(probs.log().tolist())
    cases = {
        (3, 1.0): {4, 1, 3},
        (None, 0.65): {4, 1},  # 0.40 < 0.65 <= 0.70
        (None, 0.75): {4, 1, 3},  # 0.70 < 0.75 <= 0.85
        (None, 0.2): {4},  # always at least the most likely token
        (2, 0.5): {4},  # top-k first: top-p over the renormalised (.57, .43); over all it would keep {4, 1}
    }
    for (top_k, top_p), support in cases.items():
        counts = first_token_counts(model, GenerationSettings(max_new_tokens=1, top_k=top_k, top_p=top_p))
        assert set(torch.nonzero(counts).flatten().tolist()) == support, (top_k, top_p)
        kept = torch.tensor(sorted(support))
        expected = probs[kept] / probs[kept].sum()
        assert (counts[kept] / counts.sum() - expected).abs().max() < 0.015


def test_eos_pads_the_rest_and_stops_the_labels():
    ids = torch.tensor([[9, 10], [6, 7], [3, 4]])  # counter: 9,10 -> 11,0(pad) ; 6,7 -> 8,9,10,11 ; 3,4 -> 5..
    settings = GenerationSettings(prompt_length=2, max_new_tokens=4, do_sample=False)
    new_ids, labels = generated_batch(Counter(), ids, settings, PAD, eos_id=8)
    assert new_ids.tolist() == [[9, 10, 11, 0, 0, 0], [6, 7, 8, 0, 0, 0], [3, 4, 5, 6, 7, 8]]
    i = IGNORE_INDEX
    # row 0 generated 11 then padding (padding never counts); row 1 stops at eos 8 (counted)
    assert labels.tolist() == [[i, 11, i, i, i, i], [i, 8, i, i, i, i], [i, 5, 6, 7, 8, i]]


def test_eos_equal_to_pad_still_counts():
    new_ids, labels = generated_batch(
        Counter(), torch.tensor([[9, 10]]), GenerationSettings(2, 3, do_sample=False), 0, 0
    )
    assert new_ids.tolist() == [[9, 10, 11, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 11, 0, IGNORE_INDEX, IGNORE_INDEX]]


def test_labels_count_exactly_the_generated_positions_and_drop_short_rows():
    model = tiny_transformer()
    ids = torch.randint(3, VOCAB, (5, 10), generator=torch.Generator().manual_seed(2))
    ids[1, 6:] = PAD  # shorter than the prompt: dropped
    settings = GenerationSettings(prompt_length=8, max_new_tokens=7)
    new_ids, labels = generated_batch(model, ids, settings, PAD, generator=torch.Generator().manual_seed(0))
    assert new_ids.shape == labels.shape == (4, 15)
    assert torch.equal(new_ids[:, :8], ids[[0, 2, 3, 4], :8])
    counted = labels != IGNORE_INDEX
    generated = new_ids[:, 8:] != PAD  # no eos: every non-padding generated token counts
    assert torch.equal(counted[:, 7:14], generated) and not counted[:, :7].any() and not counted[:, 14].any()
    assert torch.equal(labels[:, 7:14][generated], new_ids[:, 8:][generated])


def test_prompt_longer_than_every_sequence_is_one_clear_line():
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]])
    with pytest.raises(ValueError, match=r"prompt_length=4 is longer .* <= 3$"):
        generated_batch(Counter(), ids, GenerationSettings(4, 2), PAD)
    with pytest.raises(ValueError, match="prompt_length=9 is longer"):
        generated_batch(Counter(), ids, GenerationSettings(9, 2), PAD)


def test_generation_may_outgrow_the_data_but_not_the_model():
    new_ids, _ = generated_batch(Counter(), torch.tensor([[3, 4, 5]]), GenerationSettings(3, 13, do_sample=False), PAD)
    assert new_ids.shape == (1, 16)
    with pytest.raises(ValueError, match=r"max_length=16 .* = 17; lower"):
        generated_batch(Counter(), torch.tensor([[3, 4, 5]]), GenerationSettings(3, 14), PAD)
    with pytest.raises(ValueError, match="padding id 0"):
        sample_continuations(Counter(), torch.tensor([[3, 0]]), GenerationSettings(), PAD)


def test_generator_makes_draws_reproducible():
    model = tiny_transformer()
    settings = GenerationSettings(max_new_tokens=8, temperature=2.0)

    def draw(seed: int) -> Tensor:
        return sample_continuations(model, prompts(8), settings, PAD, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_training_modes_restored_and_no_gradient_recorded():
    model = tiny_transformer(dropout=0.2).train()
    model.layers[1].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    out = sample_continuations(model, prompts(), GenerationSettings(max_new_tokens=3), PAD)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert not out.requires_grad and out.grad_fn is None
    assert all(p.grad is None for p in model.parameters())


def test_hf_causal_lm_greedy_and_sampled():
    torch.manual_seed(0)
    model = HFCausalLM("gpt2", vocab_size=VOCAB, max_length=16, hidden_size=16, num_hidden_layers=1).eval()
    greedy = sample_continuations(model, prompts(), GenerationSettings(max_new_tokens=5, do_sample=False), PAD)
    assert torch.equal(greedy, argmax_loop(model, prompts(), 5))
    settings = GenerationSettings(prompt_length=4, max_new_tokens=5, top_k=5, top_p=0.9)
    new_ids, labels = generated_batch(model, prompts(), settings, PAD, eos_id=EOS)
    assert new_ids.shape == labels.shape == (3, 9) and (labels[:, :3] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt_length", 0, "prompt_length must be >= 1"),
        ("max_new_tokens", 0, "max_new_tokens must be >= 1"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("top_k", 0, "top_k must be >= 1"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ],
)
def test_settings_refuse_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{field: value})


def instantiate(parser: jsonargparse.ArgumentParser, config: jsonargparse.Namespace) -> jsonargparse.Namespace:
    """``parser.instantiate`` (jsonargparse >= 4.49), else the older ``instantiate_classes``."""
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(config)


def test_settings_parse_from_yaml():
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--generation", type=GenerationSettings | None, default=None)
    config = parser.parse_string("generation:\n  prompt_length: 8\n  top_k: 5\n  top_p: 0.9\n  do_sample: false\n")
    settings = instantiate(parser, config).generation
    assert settings == GenerationSettings(prompt_length=8, top_k=5, top_p=0.9, do_sample=False)
    assert instantiate(parser, parser.parse_string("generation: null\n")).generation is None
    with pytest.raises(ValueError, match="temperature must be > 0, got -1.0"):  # raised when built
        instantiate(parser, parser.parse_string("generation:\n  temperature: -1\n"))


def test_settings_parse_as_an_init_argument():
    class Module:
        def __init__(self, generation: GenerationSettings | None = None) -> None:
            self.generation = generation

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Module, "model")
    config = parser.parse_object({"model": {"generation": {"max_new_tokens": 4, "temperature": 0.7}}})
    assert instantiate(parser, config).model.generation == GenerationSettings(max_new_tokens=4, temperature=0.7)


def test_prompt_rows_are_the_rows_whose_whole_prompt_is_real():
    ids = torch.tensor([[5, 6, 7, PAD], [5, PAD, PAD, PAD], [5, 6, 7, 8]])
    assert prompt_rows(ids, 3, PAD).tolist() == [True, False, True]
    assert prompt_rows(ids, 5, PAD).tolist() == [False, False, False]  # a batch narrower than the prompt
