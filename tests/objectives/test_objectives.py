"""Objective modules: their terms, weights, trainable parts and validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlight.core.step import DistillStep, total_loss
from kdlight.functional.distillation import attention_transfer_loss, dkd_loss, kd_loss, pkt_loss, rkd_loss
from kdlight.objectives import DKD, KD, PKT, RKD, AttentionTransfer, Composite, CrossEntropy, Hint


def make_step(features=None, epoch=0, batch=6, classes=5, labeled=True) -> DistillStep:
    g = torch.Generator().manual_seed(0)
    features = features or {}
    return DistillStep(
        inputs=torch.randn(batch, 3, generator=g),
        target=torch.randint(0, classes, (batch,), generator=g) if labeled else None,
        student_logits=torch.randn(batch, classes, generator=g, requires_grad=True),
        teacher_logits=torch.randn(batch, classes, generator=g),
        student_features={k: v[0] for k, v in features.items()},
        teacher_features={k: v[1] for k, v in features.items()},
        epoch=epoch,
    )


def by_name(terms):
    return {t.name: t for t in terms}


def test_cross_entropy_matches_torch_and_skips_unlabeled():
    step = make_step()
    (term,) = CrossEntropy(weight=0.5)(step)
    assert term.name == "ce" and term.weight == 0.5
    assert torch.allclose(term.value, F.cross_entropy(step.student_logits, step.target))
    assert CrossEntropy()(make_step(labeled=False)) == []


def test_kd_mixes_ce_and_kd_with_alpha():
    step = make_step()
    terms = by_name(KD(temperature=3.0, alpha=0.8)(step))
    assert terms["kd"].weight == pytest.approx(0.8) and terms["ce"].weight == pytest.approx(0.2)
    assert torch.allclose(terms["kd"].value, kd_loss(step.student_logits, step.teacher_logits, 3.0))
    total = total_loss(list(terms.values()))
    assert torch.allclose(total, 0.2 * F.cross_entropy(step.student_logits, step.target) + 0.8 * terms["kd"].value)
    assert set(by_name(KD(alpha=1.0)(step))) == {"kd"}


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KD(temperature=bad)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DKD(temperature=bad)


def test_alpha_out_of_range():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        KD(alpha=1.5)


def test_dkd_warmup_follows_the_reference_schedule():
    objective = DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    assert [by_name(objective(make_step(epoch=e)))["dkd"].weight for e in (0, 9, 19, 50)] == pytest.approx(
        [0.05, 0.5, 1.0, 1.0]
    )
    step = make_step(epoch=4)
    terms = by_name(objective(step))
    assert terms["dkd"].weight == pytest.approx(0.25)
    assert torch.allclose(
        terms["dkd"].value, dkd_loss(step.student_logits, step.teacher_logits, step.target, 1.0, 8.0, 4.0)
    )
    assert by_name(DKD(warmup_epochs=0)(make_step(epoch=0)))["dkd"].weight == 1.0
    with pytest.raises(ValueError, match="DKD needs labels"):
        objective(make_step(labeled=False))


@pytest.mark.parametrize(
    "s_shape,t_shape",
    [((4, 8), (4, 16)), ((4, 3, 10), (4, 6, 10)), ((4, 3, 8, 8), (4, 6, 8, 8)), ((4, 3, 8, 8), (4, 6, 4, 4))],
)
def test_hint_regressor_maps_student_shape_to_teacher_shape(s_shape, t_shape):
    features = {"f": (torch.randn(s_shape, requires_grad=True), torch.randn(t_shape))}
    objective = Hint(student_layer="f", teacher_layer="f", weight=2.0)
    step = make_step(features, batch=4)
    objective.build(step)
    assert objective.regressor(step.student_features["f"]).shape == t_shape
    (term,) = objective(step)
    assert term.name == "hint" and term.weight == 2.0
    expected = F.mse_loss(objective.regressor(step.student_features["f"]), step.teacher_features["f"])
    assert torch.allclose(term.value, expected)
    term.value.backward()
    assert all(p.grad is not None for p in objective.regressor.parameters())
    assert step.student_features["f"].grad is not None


def test_hint_rank_mismatch_is_an_error():
    objective = Hint(student_layer="f", teacher_layer="f")
    with pytest.raises(ValueError, match="same rank"):
        objective.build(make_step({"f": (torch.randn(4, 8), torch.randn(4, 2, 3, 3))}, batch=4))


def test_attention_transfer_sums_layer_pairs():
    a = (torch.randn(4, 3, 8, 8), torch.randn(4, 5, 8, 8))
    b = (torch.randn(4, 3, 4, 4), torch.randn(4, 5, 2, 2))
    step = make_step({"a": a, "b": b}, batch=4)
    (term,) = AttentionTransfer(["a", "b"], ["a", "b"], weight=1000.0)(step)
    expected = attention_transfer_loss(*a) + attention_transfer_loss(*b)
    assert term.name == "at" and term.weight == 1000.0 and torch.allclose(term.value, expected)
    with pytest.raises(ValueError, match="same non-zero number"):
        AttentionTransfer(["a"], ["a", "b"])


def test_relational_objectives_use_embeddings_or_logits():
    emb = (torch.randn(6, 4, 2), torch.randn(6, 7))
    step = make_step({"embedding": emb})
    (rkd,) = RKD()(step)
    assert torch.allclose(rkd.value, rkd_loss(emb[0].flatten(1), emb[1], 25.0, 50.0))
    (pkt,) = PKT()(step)
    assert pkt.weight == 30000.0 and torch.allclose(pkt.value, pkt_loss(emb[0].flatten(1), emb[1]))
    (rkd_logits,) = RKD(student_layer=None, teacher_layer=None)(step)
    assert torch.allclose(rkd_logits.value, rkd_loss(step.student_logits, step.teacher_logits))
    assert RKD().student_layers == ["embedding"] and RKD(None, None).student_layers == []


def test_composite_concatenates_terms_and_collects_layers():
    objective = Composite([KD(alpha=0.5), AttentionTransfer(["a"], ["b"])], scale=[1.0, 2.0])
    assert objective.student_layers == ["a"] and objective.teacher_layers == ["b"]
    step = make_step({"a": (torch.randn(6, 2, 4, 4), None)})
    step.teacher_features["b"] = torch.randn(6, 3, 4, 4)
    terms = by_name(objective(step))
    assert set(terms) == {"ce", "kd", "at"} and terms["at"].weight == 2000.0


def test_composite_rejects_duplicate_terms_and_empty_lists():
    with pytest.raises(ValueError, match=r"duplicate term names \['ce'\]"):
        Composite([KD(), CrossEntropy()])(make_step())
    with pytest.raises(ValueError, match="at least one"):
        Composite([])
