"""Accumulating agreement metrics: means over updates, NaN skipping, per-class tables, DDP sync."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import MetricCollection

from kdlight.explain.metrics import (
    AGREEMENT_FUNCTIONS,
    ATTRIBUTION_METRICS,
    FIDELITY_METRICS,
    TOPK_FUNCTIONS,
    AgreementCollection,
    AgreementMean,
    PerClassAgreement,
    agreement_metrics,
    agreement_names,
    get_agreement_function,
)
from kdlight.functional import agreement as A

K = 5
ALL_NAMES = list(ATTRIBUTION_METRICS) + list(FIDELITY_METRICS)


def _kwargs(name: str) -> dict:
    return {"k": K} if name in TOPK_FUNCTIONS else {}


def _per_sample(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    fn = AGREEMENT_FUNCTIONS[name]
    return fn(a, b, K) if name in TOPK_FUNCTIONS else fn(a, b)


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 2, 3, 3, generator=g)
    b = a + 0.8 * torch.randn(n, 2, 3, 3, generator=g)
    target = torch.randint(0, 4, (n,), generator=g)
    return a, b, target


def _with_nans(a: torch.Tensor, b: torch.Tensor, rows=(1, 2, 7, 30)) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = a.clone(), b.clone()
    a[rows[0], 0, 0, 0] = float("nan")
    b[rows[1], 1, 2, 2] = float("inf")
    a[rows[2]] = float("nan")
    b[rows[3], 0, 1, 1] = float("-inf")
    return a, b


# ------------------------------------------------------------------------------------------
# names and construction
# ------------------------------------------------------------------------------------------
def test_names():
    assert agreement_names() == list(AGREEMENT_FUNCTIONS)
    assert set(ATTRIBUTION_METRICS) == {
        "cosine",
        "rank_correlation",
        "pearson",
        "feature_agreement",
        "rank_agreement",
        "sign_agreement",
        "signed_rank_agreement",
        "pairwise_rank_agreement",
    }
    assert set(agreement_names()) == set(ATTRIBUTION_METRICS) | set(FIDELITY_METRICS)
    assert get_agreement_function("cosine") is A.cosine_agreement


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        AgreementMean("cosin")
    for name in agreement_names():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="rank_correlation"):
        get_agreement_function("nope")
    with pytest.raises(ValueError, match="pearson"):
        PerClassAgreement("nope", num_classes=3)


def test_k_required_only_for_topk():
    with pytest.raises(ValueError, match="k"):
        AgreementMean("feature_agreement")
    with pytest.raises(ValueError, match="does not take k"):
        AgreementMean("cosine", k=3)
    with pytest.raises(ValueError, match="k"):
        AgreementMean("rank_agreement", k=0)
    with pytest.raises(ValueError, match="num_classes"):
        PerClassAgreement("cosine", num_classes=0)


def test_k_larger_than_the_number_of_features_is_refused_not_clamped():
    """A clamped k would make feature agreement 1.0 for any maps (chance level)."""
    a, b = torch.randn(4, 1, 2, 3), torch.randn(4, 1, 2, 3)  # 6 features per sample
    assert torch.isfinite(AgreementCollection(k=6)(a, b)["feature_agreement"])
    for metric in (AgreementCollection(k=7), PerClassAgreement("feature_agreement", num_classes=2, k=7)):
        args = (a, b) if isinstance(metric, AgreementCollection) else (a, b, torch.tensor([0, 1, 0, 1]))
        with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= F, where F=6 .*; got k=7") as info:
            metric.update(*args)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# accumulation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
def test_mean_over_updates_equals_mean_over_concatenated_data(name):
    a, b, _ = _data(40)
    if name in FIDELITY_METRICS:
        a, b = a.reshape(40, -1), b.reshape(40, -1)  # treat as logits [N, C]
    metric = AgreementMean(name, **_kwargs(name))
    for lo, hi in [(0, 3), (3, 17), (17, 18), (18, 40)]:  # uneven batches
        metric.update(a[lo:hi], b[lo:hi])
    expected = _per_sample(name, a, b).double().mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)
    assert metric.count.item() == 40 and metric.skipped.item() == 0
    metric.reset()
    assert metric.count.item() == 0 and metric.sum.item() == 0.0
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute())


def test_higher_is_better():
    assert AgreementMean("cosine").higher_is_better is True
    assert AgreementMean("predictive_kl").higher_is_better is False


@pytest.mark.parametrize("name", list(ATTRIBUTION_METRICS))
def test_non_finite_samples_are_skipped_and_counted(name):
    a, b, _ = _data(40)
    a2, b2 = _with_nans(a, b)
    keep = torch.ones(40, dtype=torch.bool)
    keep[[1, 2, 7, 30]] = False
    metric = AgreementMean(name, **_kwargs(name))
    metric.update(a2[:20], b2[:20])
    metric.update(a2[20:], b2[20:])
    expected = _per_sample(name, a[keep], b[keep]).double().mean()
    value = metric.compute()
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    assert metric.count.item() == 36 and metric.skipped.item() == 4


def test_all_samples_non_finite_gives_nan():
    metric = AgreementMean("cosine")
    metric.update(torch.full((3, 4), float("nan")), torch.ones(3, 4))
    assert torch.isnan(metric.compute()) and metric.skipped.item() == 3


def test_half_precision_updates():
    a, b, _ = _data(16)
    metric = AgreementMean("rank_correlation")
    metric.update(a.half(), b.half())
    expected = A.rank_correlation(a.half().float(), b.half().float()).double().mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)


def test_collection_keys_and_values():
    a, b, _ = _data(30)
    coll = agreement_metrics(K)
    assert isinstance(coll, MetricCollection) and isinstance(coll, AgreementCollection)
    assert sorted(coll.keys()) == sorted(ATTRIBUTION_METRICS)  # MetricCollection sorts its keys
    coll.update(a[:10], b[:10])
    coll.update(a[10:], b[10:])
    out = coll.compute()
    for name in ATTRIBUTION_METRICS:
        assert out[name].item() == pytest.approx(_per_sample(name, a, b).double().mean().item(), abs=1e-6)
    pre = agreement_metrics(3, names=["cosine", "feature_agreement"], prefix="val/")
    assert sorted(pre.keys(keep_base=False)) == ["val/cosine", "val/feature_agreement"]


def test_collection_does_not_merge_metrics_with_equal_first_states():
    # batch 1: all signs equal -> feature_agreement == sign_agreement (torchmetrics compute groups
    # would merge them); batch 2: signs flipped -> they differ
    a, b, _ = _data(20)
    coll = agreement_metrics(K, names=["feature_agreement", "sign_agreement"])
    coll.update(a[:10], a[:10] * 2)
    coll.update(a[10:], -b[10:])
    out = coll.compute()
    fa = torch.cat([A.feature_agreement(a[:10], a[:10], K), A.feature_agreement(a[10:], b[10:], K)]).mean()
    assert out["feature_agreement"].item() == pytest.approx(fa.item(), abs=1e-6)
    assert out["sign_agreement"].item() < out["feature_agreement"].item()


# ------------------------------------------------------------------------------------------
# per-class
# ------------------------------------------------------------------------------------------
def test_per_class_table_matches_groupby():
    a, b, target = _data(40)
    target[target == 3] = 2  # class 3 never seen
    a2, b2 = _with_nans(a, b)
    metric = PerClassAgreement("feature_agreement", num_classes=4, k=K)
    metric.update(a2[:25], b2[:25], target[:25])
    metric.update(a2[25:], b2[25:], target[25:])
    out = metric.compute()
    values = A.feature_agreement(a2, b2, K)
    finite = torch.isfinite(values)
    for c in range(4):
        sel = (target == c) & finite
        assert out["count"][c].item() == sel.sum().item()
        assert out["skipped"][c].item() == ((target == c) & ~finite).sum().item()
        if sel.any():
            assert out["mean"][c].item() == pytest.approx(values[sel].double().mean().item(), abs=1e-6)
        else:
            assert torch.isnan(out["mean"][c])
    assert out["overall"].item() == pytest.approx(values[finite].double().mean().item(), abs=1e-6)
    rows = metric.table(class_names=["a", "b", "c", "d"])
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]
    assert sum(r["count"] for r in rows) == 36 and sum(r["skipped"] for r in rows) == 4


def test_per_class_validates_target():
    a, b, _ = _data(6)
    metric = PerClassAgreement("cosine", num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metric.update(a, b, torch.tensor([0, 1, 2, 3, 0, 0]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(a, b, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        metric.update(a, b, torch.zeros(6))


# ------------------------------------------------------------------------------------------
# DDP (2 CPU processes, gloo)
# ------------------------------------------------------------------------------------------
DDP_NAMES = ["cosine", "rank_correlation", "sign_agreement", "pairwise_rank_agreement"]


def _ddp_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        a, b, target = _data(40)
        a, b = _with_nans(a, b, rows=(1, 2, 7, 12))  # all 4 bad rows on rank 0: uneven counts
        shard = slice(0, 20) if rank == 0 else slice(20, 40)
        coll = agreement_metrics(K, names=DDP_NAMES)
        per_class = PerClassAgreement("cosine", num_classes=4)
        kl = AgreementMean("predictive_kl")
        for lo in range(shard.start, shard.stop, 7):
            hi = min(lo + 7, shard.stop)
            coll.update(a[lo:hi], b[lo:hi])
            per_class.update(a[lo:hi], b[lo:hi], target[lo:hi])
            kl.update(a[lo:hi].reshape(hi - lo, -1), b[lo:hi].reshape(hi - lo, -1))
        result = {name: v.item() for name, v in coll.compute().items()}
        result["skipped"] = coll["cosine"].skipped.item()  # local state, restored after compute
        result["per_class"] = {k: v.clone() for k, v in per_class.compute().items()}
        result["predictive_kl"] = kl.compute().item()
        gathered = [None] * world_size
        dist.all_gather_object(gathered, result)
        if rank == 0:
            torch.save(gathered, out_file)
    finally:
        dist.destroy_process_group()


def test_ddp_sync_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.pt")
        mp.spawn(_ddp_worker, args=(2, init_file, out_file), nprocs=2, join=True)
        gathered = torch.load(out_file, weights_only=False)

    # single process over all 40 samples
    a, b, target = _data(40)
    a, b = _with_nans(a, b, rows=(1, 2, 7, 12))
    single = agreement_metrics(K, names=DDP_NAMES)
    single.update(a, b)
    expected = {name: v.item() for name, v in single.compute().items()}
    per_class = PerClassAgreement("cosine", num_classes=4)
    per_class.update(a, b, target)
    expected_pc = per_class.compute()
    kl = AgreementMean("predictive_kl")
    kl.update(a.reshape(40, -1), b.reshape(40, -1))

    # rank 0 has 16 finite samples and rank 1 has 20: a mean of per-rank means would differ
    assert gathered[0]["skipped"] == 4 and gathered[1]["skipped"] == 0
    for rank_result in gathered:  # every rank sees the same synced value
        for name in DDP_NAMES:
            assert rank_result[name] == pytest.approx(expected[name], abs=1e-6), name
        assert rank_result["predictive_kl"] == pytest.approx(kl.compute().item(), rel=1e-6)
        pc = rank_result["per_class"]
        assert torch.equal(pc["count"], expected_pc["count"])
        assert torch.equal(pc["skipped"], expected_pc["skipped"])
        torch.testing.assert_close(pc["mean"], expected_pc["mean"], equal_nan=True)
        torch.testing.assert_close(pc["overall"], expected_pc["overall"])
