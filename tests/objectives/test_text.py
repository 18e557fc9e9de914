"""Hidden-state and attention matching against float64 loops over samples and real positions."""

from __future__ import annotations

import math

import pytest
import torch

from kdlight.core.step import DistillStep
from kdlight.models import TransformerClassifier
from kdlight.objectives import AttentionMatching, HiddenStateMatching
from kdlight.training.taps import FeatureTaps

LENGTHS = [5, 3, 1]  # real tokens per sample of a [3, 6] batch
T = 6


def mask() -> torch.Tensor:
    return torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]


def step(student: dict, teacher: dict, attention_mask: torch.Tensor | None) -> DistillStep:
    empty = torch.zeros(len(LENGTHS), 2)
    return DistillStep(
        inputs=torch.zeros(len(LENGTHS), T, dtype=torch.long),
        target=None,
        student_logits=empty,
        teacher_logits=empty,
        student_features=student,
        teacher_features=teacher,
        attention_mask=attention_mask,
    )


def random_attention(heads: int) -> torch.Tensor:
    """Rows that are distributions over the real keys; padded rows and keys hold garbage the loss must skip."""
    scores = torch.randn(len(LENGTHS), heads, T, T)
    probs = scores.masked_fill(~mask()[:, None, None, :], -math.inf).softmax(-1)
    garbage = torch.rand_like(probs)
    real = mask()[:, None, :, None] & mask()[:, None, None, :]
    return torch.where(real, probs, garbage)


# -- hidden states --------------------------------------------------------------------------------
def hidden_reference(pairs_s: list[torch.Tensor], pairs_t: list[torch.Tensor], projections) -> float:
    per_pair = []
    for h_s, h_t, project in zip(pairs_s, pairs_t, projections):
        errors = []
        for n, length in enumerate(LENGTHS):
            for t in range(length):
                errors.append(((project(h_s[n, t].double()) - h_t[n, t].double()) ** 2).mean())
        per_pair.append(sum(errors) / len(errors))
    return float(sum(per_pair) / len(per_pair))


def test_hidden_state_matching_equals_a_loop_over_real_positions() -> None:
    torch.manual_seed(0)
    objective = HiddenStateMatching([[0, 0], [1, 2]], weight=3.0)
    s = {f"hidden_states.{i}": torch.randn(3, T, 4) for i in (0, 1)}
    t = {f"hidden_states.{i}": torch.randn(3, T, 8) for i in (0, 2)}
    example = step(s, t, mask())
    objective.build(example)
    (term,) = objective(example)
    assert (term.name, term.weight) == ("hidden", 3.0)
    projections = [
        lambda v, p=p: v @ p.weight.detach().double().T + p.bias.detach().double() for p in objective.projections
    ]
    expected = hidden_reference(
        [s["hidden_states.0"], s["hidden_states.1"]], [t["hidden_states.0"], t["hidden_states.2"]], projections
    )
    assert term.value.item() == pytest.approx(expected, rel=1e-5)
    term.value.backward()
    assert all(p.grad is not None for p in objective.parameters())


def test_equal_widths_use_no_projection_and_no_mask_means_every_position() -> None:
    torch.manual_seed(1)
    objective = HiddenStateMatching([[1, 1]])
    h_s, h_t = torch.randn(3, T, 4), torch.randn(3, T, 4)
    example = step({"hidden_states.1": h_s}, {"hidden_states.1": h_t}, None)
    objective.build(example)
    assert list(objective.parameters()) == []
    (term,) = objective(example)
    assert term.value.item() == pytest.approx(((h_s.double() - h_t.double()) ** 2).mean().item(), rel=1e-6)


def test_projections_are_rebuilt_from_saved_shapes() -> None:
    trained = HiddenStateMatching([[1, 2]])
    trained.build_from_shapes([(3, T, 4)], [(3, T, 8)])
    restored = HiddenStateMatching([[1, 2]])
    fake = step({"hidden_states.1": torch.empty(3, T, 4)}, {"hidden_states.2": torch.empty(3, T, 8)}, None)
    restored.build(fake)
    restored.load_state_dict(trained.state_dict())
    torch.testing.assert_close(restored.projections[0].weight, trained.projections[0].weight)


# -- attention maps -------------------------------------------------------------------------------
def attention_reference(a_s: torch.Tensor, a_t: torch.Tensor, loss: str) -> float:
    a_s, a_t = a_s.double(), a_t.double()
    if a_s.shape[1] != a_t.shape[1]:
        a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
    values = []
    for n, length in enumerate(LENGTHS):
        for h in range(a_s.shape[1]):
            for q in range(length):
                p_t, p_s = a_t[n, h, q, :length], a_s[n, h, q, :length]
                if loss == "mse":
                    values += list((p_s - p_t) ** 2)
                else:
                    values.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t.tolist(), p_s.tolist())))
    return float(sum(values) / len(values))


@pytest.mark.parametrize(("loss", "student_heads"), [("mse", 4), ("kl", 4), ("kl", 2)])
def test_attention_matching_equals_a_loop_over_real_queries_and_keys(loss: str, student_heads: int) -> None:
    torch.manual_seed(2)
    a_s, a_t = random_attention(student_heads), random_attention(4)
    objective = AttentionMatching([[0, 1]], loss=loss, weight=0.5)
    example = step({"attentions.0": a_s}, {"attentions.1": a_t}, mask())
    objective.build(example)
    (term,) = objective(example)
    assert (term.name, term.weight) == ("attention", 0.5)
    assert term.value.item() == pytest.approx(attention_reference(a_s, a_t, loss), rel=1e-5)


def test_kl_of_identical_maps_is_zero() -> None:
    a = random_attention(4)
    (term,) = AttentionMatching([[0, 0]], loss="kl")(step({"attentions.0": a}, {"attentions.0": a.clone()}, mask()))
    assert term.value.item() == pytest.approx(0.0, abs=1e-6)


def test_mse_with_different_head_counts_suggests_kl() -> None:
    objective = AttentionMatching([[0, 0]], loss="mse")
    example = step({"attentions.0": random_attention(2)}, {"attentions.0": random_attention(4)}, mask())
    with pytest.raises(ValueError, match="2 heads and the teacher's attentions.0 4; use loss='kl'") as error:
        objective.build(example)
    assert "\n" not in str(error.value)


# -- real models: padding never changes the loss -----------------------------------------------------
@pytest.mark.parametrize(
    "objective",
    [
        HiddenStateMatching([[0, 0], [1, 2]]),
        AttentionMatching([[0, 1]], loss="mse"),
        AttentionMatching([[0, 1]], loss="kl"),
    ],
    ids=["hidden", "attention-mse", "attention-kl"],
)
def test_more_padding_gives_the_same_loss(objective) -> None:
    torch.manual_seed(3)
    teacher = TransformerClassifier(30, d_model=16, depth=2, heads=4, dropout=0.0).eval()
    student = TransformerClassifier(30, d_model=8, depth=1, heads=4, dropout=0.0).eval()
    ids = torch.tensor([[5, 7, 9, 3, 0], [4, 8, 2, 6, 11]])
    values = []
    with (
        FeatureTaps(student, objective.student_layers) as s_taps,
        FeatureTaps(teacher, objective.teacher_layers) as t_taps,
    ):
        for batch in (ids, torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)):
            student(batch), teacher(batch)
            example = step(s_taps.pop(), t_taps.pop(), batch != 0)
            objective.build(example)
            values.append(objective(example)[0].value.item())
    assert values[0] > 0
    assert values[1] == pytest.approx(values[0], rel=1e-5)


# -- arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: HiddenStateMatching([]), "at least one"),
        (lambda: HiddenStateMatching([[1, 2, 3]]), r"\[student_layer, teacher_layer\] index pairs >= 0.*\[1, 2, 3\]"),
        (lambda: AttentionMatching([[0, -1]]), "index pairs >= 0"),
        (lambda: AttentionMatching([[0, 0]], loss="cosine"), "loss of AttentionMatching must be one of mse, kl"),
        (lambda: HiddenStateMatching([[0, 0]], loss="kl"), "loss of HiddenStateMatching must be one of mse"),
        (lambda: HiddenStateMatching([[0, 0]], weight=-1.0), "weight must be >= 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        make()
    assert "\n" not in str(error.value)


def test_a_layer_past_the_depth_names_the_valid_range() -> None:
    objective = HiddenStateMatching([[3, 0]])
    student = TransformerClassifier(30, d_model=8, depth=2)
    with pytest.raises(ValueError, match="has hidden_states.0 to hidden_states.2"):
        FeatureTaps(student, objective.student_layers, role="student")


# -- in a distillation fit --------------------------------------------------------------------------
def test_fit_on_token_data_and_projection_restored_from_checkpoint(tmp_path) -> None:
    from kdlight.data.text_shortcut import ShortcutText
    from kdlight.objectives import KD, Composite
    from kdlight.training.distillation import DistillationModule

    from conftest import tiny_trainer

    def module() -> DistillationModule:
        text = data.modality
        shared = dict(vocab_size=text.vocab_size, num_classes=4, max_length=text.max_length, pad_token_id=text.pad_id)
        teacher = TransformerClassifier(d_model=16, depth=2, heads=4, **shared)
        student = TransformerClassifier(d_model=8, depth=1, heads=2, **shared)
        objective = Composite([KD(), HiddenStateMatching([[1, 2]]), AttentionMatching([[0, 1]], loss="kl")])
        return DistillationModule(teacher, student, objective, teacher_as_given=True)

    data = ShortcutText(num_samples=120, batch_size=16)
    data.setup("fit")
    trained = module()
    trainer = tiny_trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(trained, datamodule=data)
    assert {"train/loss_hidden_epoch", "train/loss_attention_epoch"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    restored = module()
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    hidden = restored.objective.parts[1]
    torch.testing.assert_close(hidden.projections[0].weight, trained.objective.parts[1].projections[0].weight)
