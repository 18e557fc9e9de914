"""Tests of kdlight.functional.distillation against pinned values and invariants.

The pinned values in fixtures/distillation_reference.json come from
fixtures/make_distillation_reference.py, a numpy/float64 implementation written straight
from the formulas (not from kdlight). Inputs are rebuilt from the stored seeds with that
script's ``make_inputs``; stored checksums catch a change in numpy's random stream.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlight.functional.distillation import (
    __all__ as PUBLIC,
)
from kdlight.functional.distillation import (
    attention_transfer_loss,
    dkd_loss,
    kd_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
)

FIXTURES = Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "distillation_reference.json").read_text())

_spec = importlib.util.spec_from_file_location(
    "make_distillation_reference", FIXTURES / "make_distillation_reference.py"
)
_gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gen)

# float64 matches the float64 reference to rounding; float32 to a few ulps of the sums
TOL = {torch.float64: dict(rel=1e-9, abs=1e-12), torch.float32: dict(rel=2e-4, abs=1e-6)}
DTYPES = [torch.float64, torch.float32]


def _inputs(case: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    arrays = _gen.make_inputs(case["seed"], case["shapes"], case["scale"], case.get("num_classes"))
    for name, value in case["checksum"].items():
        assert float(np.asarray(arrays[name], dtype=np.float64).sum()) == pytest.approx(value, rel=1e-12, abs=1e-12), (
            "numpy's random stream changed; regenerate the fixture"
        )
    return {k: torch.from_numpy(v) if k == "target" else torch.from_numpy(v).to(dtype) for k, v in arrays.items()}


def _ids(cases: list[dict]) -> list[str]:
    return [f"seed{c['seed']}" for c in cases]


def test_public_names():
    assert set(PUBLIC) == {
        "kd_loss",
        "dkd_loss",
        "attention_transfer_loss",
        "rkd_loss",
        "rkd_distance_loss",
        "rkd_angle_loss",
        "pkt_loss",
    }


# --------------------------------------------------------------------------- pinned values


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", REF["logits"], ids=_ids(REF["logits"]))
def test_kd_and_dkd_match_reference(case, dtype):
    x = _inputs(case, dtype)
    s, t, y, T = x["student"], x["teacher"], x["target"], case["temperature"]
    tol = TOL[dtype]
    out = kd_loss(s, t, temperature=T)
    assert out.dtype == dtype and out.dim() == 0
    assert out.item() == pytest.approx(case["kd"], **tol)
    # TCKD alone (alpha=1, beta=0), NCKD alone (alpha=0, beta=1), and the defaults
    assert dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=T).item() == pytest.approx(case["tckd"], **tol)
    assert dkd_loss(s, t, y, alpha=0.0, beta=1.0, temperature=T).item() == pytest.approx(case["nckd"], **tol)
    assert dkd_loss(s, t, y, temperature=T).item() == pytest.approx(case["dkd_default"], **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", REF["attention"], ids=_ids(REF["attention"]))
def test_attention_transfer_matches_reference(case, dtype):
    x = _inputs(case, dtype)
    out = attention_transfer_loss(x["student"], x["teacher"])
    assert out.dtype == dtype and out.dim() == 0
    assert out.item() == pytest.approx(case["at"], **TOL[dtype])
    # symmetric in its arguments
    assert attention_transfer_loss(x["teacher"], x["student"]).item() == pytest.approx(case["at"], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", REF["embeddings"], ids=_ids(REF["embeddings"]))
def test_rkd_and_pkt_match_reference(case, dtype):
    x = _inputs(case, dtype)
    s, t = x["student"], x["teacher"]
    tol = TOL[dtype]
    assert rkd_distance_loss(s, t).item() == pytest.approx(case["rkd_distance"], **tol)
    assert rkd_angle_loss(s, t).item() == pytest.approx(case["rkd_angle"], **tol)
    assert rkd_loss(s, t).item() == pytest.approx(case["rkd"], **tol)
    assert rkd_loss(s, t, distance_weight=1.0, angle_weight=0.0).item() == pytest.approx(case["rkd_distance"], **tol)
    assert pkt_loss(s, t).item() == pytest.approx(case["pkt"], **tol)


# --------------------------------------------------------------------------- invariants


def _logits(b=6, c=9, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(b, c, generator=g, dtype=dtype)


def test_kd_of_identical_logits_is_zero():
    z = _logits()
    assert kd_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-12)
    y = torch.arange(6) % 9
    assert dkd_loss(z, z.clone(), y).item() == pytest.approx(0.0, abs=1e-12)
    f = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    assert attention_transfer_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-15)
    e = torch.randn(5, 8, dtype=torch.float64)
    assert rkd_loss(e, e.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert pkt_loss(e, e.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_kd_and_dkd_nonnegative(seed):
    s, t = _logits(seed=seed), _logits(seed=seed + 100)
    y = torch.randint(0, 9, (6,), generator=torch.Generator().manual_seed(seed))
    assert kd_loss(s, t).item() >= 0.0
    assert dkd_loss(s, t, y, alpha=1.0, beta=0.0).item() >= 0.0
    assert dkd_loss(s, t, y, alpha=0.0, beta=1.0).item() >= 0.0


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_dkd_decomposition_per_sample(T):
    """For one sample: KD = TCKD + (1 - p_t[target]) * NCKD (Zhao et al. eq. 4)."""
    s, t = _logits(b=4, c=7, seed=3), _logits(b=4, c=7, seed=4)
    y = torch.tensor([0, 3, 6, 2])
    for i in range(4):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        p_target = torch.softmax(ti / T, dim=1)[0, yi[0]].item()
        tckd = dkd_loss(si, ti, yi, alpha=1.0, beta=0.0, temperature=T).item()
        nckd = dkd_loss(si, ti, yi, alpha=0.0, beta=1.0, temperature=T).item()
        assert kd_loss(si, ti, T).item() == pytest.approx(tckd + (1 - p_target) * nckd, rel=1e-10)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 7.5])
def test_temperature_squared_scaling(T):
    s, t = _logits(seed=1), _logits(seed=2)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    # kd_loss / T^2 is the plain batch-mean KL at temperature T
    plain = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * plain.item(), rel=1e-10)
    # logits scaled by T at temperature T give T^2 times the loss at temperature 1
    assert kd_loss(T * s, T * t, T).item() == pytest.approx(T * T * kd_loss(s, t, 1.0).item(), rel=1e-10)
    assert dkd_loss(T * s, T * t, y, temperature=T).item() == pytest.approx(
        T * T * dkd_loss(s, t, y, temperature=1.0).item(), rel=1e-10
    )


def test_kd_batchmean_not_elementwise_mean():
    s, t = _logits(b=1, c=5), _logits(b=1, c=5, seed=9)
    both = kd_loss(torch.cat([s, s]), torch.cat([t, t]))
    assert both.item() == pytest.approx(kd_loss(s, t).item(), rel=1e-12)


def test_attention_pools_larger_map_like_explicit_pooling():
    fs, ft = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4)
    pooled = F.adaptive_avg_pool2d(fs, (4, 4))
    assert attention_transfer_loss(fs, ft).item() == pytest.approx(attention_transfer_loss(pooled, ft).item(), rel=1e-6)


# --------------------------------------------------------------------------- gradients


def _feature_pairs():
    return {
        "kd": (lambda s, t: kd_loss(s, t), (6, 9), (6, 9)),
        "dkd": (lambda s, t: dkd_loss(s, t, torch.arange(6) % 9), (6, 9), (6, 9)),
        "at2d": (attention_transfer_loss, (3, 2, 8, 8), (3, 5, 4, 4)),
        "at1d": (attention_transfer_loss, (3, 2, 6), (3, 5, 12)),
        "rkd": (rkd_loss, (5, 8), (5, 12)),
        "pkt": (pkt_loss, (5, 8), (5, 12)),
    }


@pytest.mark.parametrize("name", list(_feature_pairs()))
def test_gradients_reach_student(name):
    fn, s_shape, t_shape = _feature_pairs()[name]
    torch.manual_seed(0)
    s = (2 * torch.randn(s_shape)).requires_grad_()
    t = 2 * torch.randn(t_shape)
    fn(s, t).backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all()
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", [rkd_loss, rkd_distance_loss, rkd_angle_loss])
def test_rkd_teacher_side_gets_no_gradient(fn):
    s = torch.randn(5, 8, requires_grad=True)
    t = torch.randn(5, 12, requires_grad=True)
    loss = fn(s, t)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_rkd_degenerate_batches_are_finite():
    # one sample: no positive distance, no proper angle
    s, t = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4)
    loss = rkd_loss(s, t)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()
    # duplicated rows
    s = torch.randn(1, 4).repeat(3, 1).requires_grad_()
    loss = rkd_loss(s, torch.randn(3, 4))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(s.grad).all()


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_give_finite_float32(dtype):
    torch.manual_seed(0)
    # extreme logits: p_target rounds to 0 or 1 in half precision
    s = (30 * torch.randn(8, 10)).to(dtype).requires_grad_()
    t = (30 * torch.randn(8, 10)).to(dtype)
    y = torch.randint(0, 10, (8,))
    fs = (20 * torch.randn(2, 3, 8, 8)).to(dtype).requires_grad_()
    ft = (20 * torch.randn(2, 5, 4, 4)).to(dtype)
    es = (50 * torch.randn(6, 16)).to(dtype).requires_grad_()
    et = (50 * torch.randn(6, 8)).to(dtype)
    losses = [
        kd_loss(s, t),
        kd_loss(s, t, 1.0),
        dkd_loss(s, t, y),
        dkd_loss(s, t, y, 1, 8, 1.0),
        attention_transfer_loss(fs, ft),
        rkd_loss(es, et),
        pkt_loss(es, et),
    ]
    for loss in losses:
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
    sum(losses).backward()
    for x in (s, fs, es):
        assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # half result is close to the float32 result on the same (rounded) values
    assert kd_loss(s, t).item() == pytest.approx(kd_loss(s.detach().float(), t.float()).item(), rel=1e-6)


def test_dkd_confident_teacher_is_finite():
    # p_target = 1 to float precision: log(1 - p_target) must not be log(0)
    s = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 300.0, -300.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() > 100  # student is confidently wrong about the target class


# --------------------------------------------------------------------------- validation


def test_temperature_must_be_positive():
    z = torch.randn(2, 3)
    for T in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^temperature must be > 0, got "):
            kd_loss(z, z, temperature=T)
        with pytest.raises(ValueError, match=r"^temperature must be > 0, got "):
            dkd_loss(z, z, torch.tensor([0, 1]), temperature=T)
    with pytest.raises(ValueError, match=r"got 0\.0$"):
        kd_loss(z, z, temperature=0.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: kd_loss(torch.randn(2, 3), torch.randn(4, 3)),
        lambda: dkd_loss(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1])),
        lambda: attention_transfer_loss(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 4, 4)),
        lambda: rkd_loss(torch.randn(2, 3), torch.randn(4, 3)),
        lambda: rkd_distance_loss(torch.randn(2, 3), torch.randn(4, 3)),
        lambda: rkd_angle_loss(torch.randn(2, 3), torch.randn(4, 3)),
        lambda: pkt_loss(torch.randn(2, 3), torch.randn(4, 3)),
    ],
    ids=["kd", "dkd", "at", "rkd", "rkd_distance", "rkd_angle", "pkt"],
)
def test_batch_mismatch_raises(call):
    with pytest.raises(ValueError, match=r"batch sizes differ.*\(2, .*\(4, ") as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fn", [kd_loss, lambda s, t: dkd_loss(s, t, torch.tensor([0, 1]))], ids=["kd", "dkd"])
def test_class_count_mismatch_raises(fn):
    with pytest.raises(ValueError, match=r"class counts differ.*\(2, 3\).*\(2, 5\)") as info:
        fn(torch.randn(2, 3), torch.randn(2, 5))
    assert "\n" not in str(info.value)


def test_other_bad_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        kd_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="target must have shape"):
        dkd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer class indices"):
        dkd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        dkd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="spatial"):
        attention_transfer_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="spatial"):
        attention_transfer_loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="at least 2-D"):
        pkt_loss(torch.randn(4), torch.randn(4))
