"""Accumulating agreement metrics: means over updates, NaN skipping, per-class tables, DDP sync."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import MetricCollection

from kdlight.explain import metrics as M
from kdlight.explain.metrics import (
    COMPARES,
    AgreementCollection,
    AgreementMean,
    MetricSpec,
    PerClassAgreement,
    metric_names,
    metric_spec,
    register_metric,
)
from kdlight.functional import agreement as A

K = 5
MAP_NAMES = metric_names("maps")
LOGIT_NAMES = metric_names("logits")


def _kwargs(name: str) -> dict:
    return {"k": K} if metric_spec(name).uses_k else {}


def _per_sample(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return metric_spec(name).score(a, b, top_k=K if metric_spec(name).uses_k else None)


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
# the registry
# ------------------------------------------------------------------------------------------
#: name: (compares, higher_is_better, uses_k, has_chance) -- what the callback's logs rely on
BUILT_IN = {
    "cosine": ("maps", True, False, True),
    "rank_correlation": ("maps", True, False, True),
    "pearson": ("maps", True, False, False),
    "feature_agreement": ("maps", True, True, True),
    "rank_agreement": ("maps", True, True, False),
    "sign_agreement": ("maps", True, True, False),
    "signed_rank_agreement": ("maps", True, True, False),
    "pairwise_rank_agreement": ("maps", True, False, False),
    "top1_agreement": ("logits", True, False, False),
    "predictive_kl": ("logits", False, False, False),
    "localisation_mass": ("mask", True, False, False),
    "localisation_topk": ("mask", True, True, False),
    "sensitivity_max": ("explainer", False, False, False),
    "self_agreement": ("explainer", True, False, False),
}


def test_every_built_in_metric_is_declared_once_with_its_metadata():
    assert set(metric_names()) == set(BUILT_IN)  # the metrics declared in other files are found too
    for name, (compares, higher, uses_k, chance) in BUILT_IN.items():
        spec = metric_spec(name)
        assert (spec.name, spec.compares, spec.higher_is_better, spec.uses_k, spec.has_chance) == (
            name,
            compares,
            higher,
            uses_k,
            chance,
        )
        assert AgreementMean(name, k=K if uses_k else None).higher_is_better is higher
    assert metric_names("maps")[:8] == [n for n, meta in BUILT_IN.items() if meta[0] == "maps"]
    assert metric_names("maps", has_chance=True) == ["cosine", "rank_correlation", "feature_agreement"]
    assert set(metric_names()) == {n for kind in COMPARES for n in metric_names(kind)}


def test_unknown_names_are_one_line_listing_the_valid_ones():
    for make in (
        lambda: AgreementMean("cosin"),
        lambda: PerClassAgreement("nope", num_classes=3),
        lambda: AgreementCollection(K, names=["cosine", "nope"]),
        lambda: metric_spec(3),
    ):
        with pytest.raises(ValueError) as err:
            make()
        message = str(err.value)
        assert "\n" not in message and all(name in message for name in metric_names()), message
    with pytest.raises(ValueError, match=r"cannot import no_such_pkg.*valid names: cosine"):
        metric_spec("no_such_pkg.MY_METRIC")
    with pytest.raises(ValueError, match=r"has no attribute 'MISSING'"):
        metric_spec("kdlight.functional.agreement.MISSING")
    with pytest.raises(ValueError, match=r"is a function, not a metric: declare it as MetricSpec"):
        metric_spec("kdlight.functional.agreement.cosine_agreement")
    with pytest.raises(ValueError, match=r"compares"):
        metric_names("pixels")


def test_a_spec_is_checked_when_declared():
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        MetricSpec("my.metric", A.cosine_agreement)
    with pytest.raises(ValueError, match="unknown compares='pixels'; valid: maps, logits, mask, explainer"):
        MetricSpec("mine", A.cosine_agreement, compares="pixels")
    with pytest.raises(TypeError, match="fn must be callable"):
        MetricSpec("mine", 3)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'cosine' is already registered"):
        register_metric(MetricSpec("cosine", A.pearson_agreement))
    assert metric_spec("cosine").fn is A.cosine_agreement
    register_metric(metric_spec("cosine"))  # the same declaration again (a re-imported module) is fine


def _l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).sum(1)


def test_a_registered_metric_is_logged_by_default(monkeypatch):
    metric_names()  # the built-in files are found first, so the copy below holds them
    monkeypatch.setattr(M, "METRICS", dict(M.METRICS))
    spec = register_metric(MetricSpec("l1_distance", _l1_distance, higher_is_better=False))
    assert metric_names("maps")[-1] == "l1_distance"
    a, b, _ = _data(12)
    out = AgreementCollection(K).forward(a, b)
    assert set(out) == set(MAP_NAMES) | {"l1_distance"}
    assert out["l1_distance"].item() == pytest.approx(_l1_distance(a, b).mean().item(), rel=1e-6)
    assert spec.name not in metric_names("logits")


USER_MODULE = """
import torch
from kdlight.explain.metrics import MetricSpec

def max_gap(a, b):
    return (a - b).abs().flatten(1).amax(1)

MAX_GAP = MetricSpec("max_gap", max_gap, higher_is_better=False)

class TopGap:  # a class with the same attributes works too
    name = "top_gap"
    fn = staticmethod(lambda a, b, k: (a - b).abs().flatten(1).topk(k, dim=1).values.mean(1))
    higher_is_better = False
    uses_k = True
"""


def test_metrics_outside_kdlight_are_named_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "user_metrics_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    a, b, target = _data(10)
    coll = AgreementCollection(3, names=["cosine", "user_metrics_mod.MAX_GAP", "user_metrics_mod.TopGap"])
    assert sorted(coll.keys()) == ["cosine", "max_gap", "top_gap"]
    out = coll.forward(a, b)
    gap = (a - b).abs().flatten(1)
    assert out["max_gap"].item() == pytest.approx(gap.amax(1).mean().item(), rel=1e-6)
    assert out["top_gap"].item() == pytest.approx(gap.topk(3, dim=1).values.mean().item(), rel=1e-6)
    assert coll["top_gap"].higher_is_better is False
    assert PerClassAgreement("user_metrics_mod.MAX_GAP", num_classes=4).forward(a, b, target)["overall"] > 0
    assert "max_gap" not in metric_names()  # naming a metric by its path does not register it


def test_collections_hold_unique_names_of_one_kind():
    with pytest.raises(ValueError, match="same inputs, got logits, maps"):
        AgreementCollection(K, names=["cosine", "predictive_kl"])
    with pytest.raises(ValueError, match=r"\['cosine'\] given twice"):
        AgreementCollection(K, names=["cosine", "cosine"])


def test_options_are_the_keyword_only_parameters_of_the_function():
    assert metric_spec("self_agreement").option_names == ("noise_scale", "n_samples", "seed", "agreement", "k")
    message = r"unknown option\(s\) \['noise'\] for metric 'sensitivity_max'; valid options: noise_scale"
    with pytest.raises(ValueError, match=message):
        AgreementMean("sensitivity_max", options={"noise": 0.1})
    with pytest.raises(ValueError, match="valid options: none"):
        AgreementMean("cosine", options={"seed": 0})
    with pytest.raises(ValueError, match="compares an explainer"):
        PerClassAgreement("sensitivity_max", num_classes=2)


def test_k_required_only_for_topk():
    with pytest.raises(ValueError, match="k"):
        AgreementMean("feature_agreement")
    with pytest.raises(ValueError, match="does not take k .*feature_agreement"):
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
@pytest.mark.parametrize("name", MAP_NAMES + LOGIT_NAMES)
def test_mean_over_updates_equals_mean_over_concatenated_data(name):
    a, b, _ = _data(40)
    if name in LOGIT_NAMES:
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


@pytest.mark.parametrize("name", MAP_NAMES)
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
    coll = AgreementCollection(K)
    assert isinstance(coll, MetricCollection)
    assert sorted(coll.keys()) == sorted(MAP_NAMES)  # MetricCollection sorts its keys
    coll.update(a[:10], b[:10])
    coll.update(a[10:], b[10:])
    out = coll.compute()
    for name in MAP_NAMES:
        assert out[name].item() == pytest.approx(_per_sample(name, a, b).double().mean().item(), abs=1e-6)
    pre = AgreementCollection(3, names=["cosine", "feature_agreement"], prefix="val/")
    assert sorted(pre.keys(keep_base=False)) == ["val/cosine", "val/feature_agreement"]


def test_collection_does_not_merge_metrics_with_equal_first_states():
    # batch 1: all signs equal -> feature_agreement == sign_agreement (torchmetrics compute groups
    # would merge them); batch 2: signs flipped -> they differ
    a, b, _ = _data(20)
    coll = AgreementCollection(K, names=["feature_agreement", "sign_agreement"])
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
        coll = AgreementCollection(K, names=DDP_NAMES)
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
    single = AgreementCollection(K, names=DDP_NAMES)
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


def test_a_metric_option_called_k_does_not_collide_with_the_top_k_size():
    def share_above(a, b, top_k, *, k: float = 0.0):  # an option named k, beside the top-k size
        return ((a > k) & (b > k)).float().mean(1) * top_k / top_k

    spec = MetricSpec("share_above_test", share_above, uses_k=True)
    a, b = torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    assert spec.score(a, b, top_k=1, k=0.0).tolist() == [0.5]
