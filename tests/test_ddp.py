"""Distillation under DDP (2 CPU processes, gloo) equals the single-process run.

tests/ddp_worker.py is launched as a script (Lightning's ``ddp`` strategy re-runs ``sys.argv`` for
the other rank): once with ``devices=2, strategy="ddp"`` (fit, save, validate) and once with
``devices=1`` validating the student that the DDP run saved. See the worker's docstring for why the
validation split (270 samples, even) is sharded without padding. The probe set of the
ExplanationAgreement callback has 31 samples on purpose: the ranks explain ``probes[0::2]`` (16) and
``probes[1::2]`` (15), so the synced metrics must be exact means over all 31 probes, not means of
per-rank means.

Not compared exactly: the infidelity and stability scores. Their perturbations are drawn from a
generator seeded per call, and the draws depend on the number of probes in the call, so a rank's
16 probes get other noise than the same probes get inside the 31-probe single-process call; the
values agree only in distribution.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
TIMEOUT = 300
RTOL, ATOL = 1e-5, 1e-6  # float32 sums in another order; counts are exact

pytestmark = pytest.mark.slow  # three launches of ~15 s each on 2 CPU cores


def run(command: list[str], cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout kill the whole group (Lightning's
    launcher starts rank 1 as a child of rank 0, which a plain kill would leave behind)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", MPLBACKEND="Agg")
    env.pop("LOCAL_RANK", None)  # never inherit a rank from an enclosing launcher
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"{' '.join(command[:4])} ... hung for {timeout} s (a collective on some ranks only?):\n{stderr[-3000:]}"
        )
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def launch(*args: str, cwd: Path) -> dict:
    proc = run([sys.executable, str(WORKER), *args], cwd)
    out = Path(args[args.index("--out") + 1]) / "result.json"
    assert proc.returncode == 0 and out.is_file(), (
        f"worker {' '.join(args[:2])} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(teacher_checkpoint, tmp_path_factory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("ddp")
    ddp = launch("--mode", "ddp", "--teacher-checkpoint", str(teacher_checkpoint), "--out", str(root / "ddp"), cwd=root)
    single = launch(
        "--mode",
        "single",
        "--teacher-checkpoint",
        str(teacher_checkpoint),
        "--student-checkpoint",
        str(root / "ddp" / "student.ckpt"),
        "--out",
        str(root / "single"),
        cwd=root,
    )
    return ddp, single


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


def test_ddp_trains_with_a_frozen_identical_teacher_on_every_rank(runs):
    ddp, _ = runs
    assert ddp["world_size"] == 2
    assert ddp["global_step"] == 2 * 10  # 2 epochs x 10 batches, each rank its own shard
    # the teacher: the same bits before fit, after fit and after validate, on both ranks
    hashes = ddp["teacher_hash_before"] + ddp["teacher_hash_after"] + ddp["teacher_hash_validated"]
    assert len(hashes) == 6 and len(set(hashes)) == 1
    assert ddp["teacher_requires_grad"] == [False, False]
    # eval mode before and after every training step on every rank (also after in-fit validation)
    flags = ddp["teacher_training_flags"]
    assert len(flags) == 2 and all(len(f) == 2 * ddp["global_step"] for f in flags)
    assert not any(any(f) for f in flags)
    # the student trained, and DDP kept its replicas identical
    assert len(set(ddp["student_hash_before"])) == 1 and len(set(ddp["student_hash_after"])) == 1
    assert ddp["student_hash_after"][0] != ddp["student_hash_before"][0]
    for losses in ddp["train_losses"]:
        assert all(math.isfinite(v) for v in losses)
        assert sum(losses[-5:]) < sum(losses[:5])
    # the ExplanationAgreement callback also ran inside fit (last epoch) without hanging
    assert "val/explain/saliency/cosine" in ddp["fit_metrics"]


def test_single_process_reference_validates_the_same_student(runs):
    ddp, single = runs
    assert single["world_size"] == 1
    assert single["student_hash_validated"] == [ddp["student_hash_after"][0]]
    assert single["teacher_hash_validated"] == [ddp["teacher_hash_after"][0]]


def test_validation_set_is_sharded_without_padding(runs):
    ddp, _ = runs
    # DistributedSampler pads a split whose size is not a multiple of the world size by repeating
    # samples (counted twice by every metric); an even split is sharded exactly
    assert ddp["val_size"] % ddp["world_size"] == 0


@pytest.mark.parametrize("name", ["val/acc", "val/f1", "val/agreement", "val/kl", "val/teacher_acc"])
def test_validation_metrics_equal_single_process(runs, name):
    ddp, single = runs
    assert close(ddp["val_metrics"][name], single["val_metrics"][name]), (
        ddp["val_metrics"][name],
        single["val_metrics"][name],
    )


def test_validation_loss_is_synced_across_ranks(runs):
    """Waits on module.py logging ``{split}/loss`` with ``sync_dist=True`` (else rank 0's half)."""
    ddp, single = runs
    assert close(ddp["val_metrics"]["val/loss"], single["val_metrics"]["val/loss"])


def test_probe_set_is_sharded_across_ranks(runs):
    ddp, single = runs
    assert ddp["probe_shard_sizes"] == [[16], [15]]  # probes[0::2], probes[1::2] of 31
    assert single["probe_shard_sizes"] == [[31]]


AGREEMENT = [
    "cosine",
    "rank_correlation",
    "pearson",
    "feature_agreement",
    "rank_agreement",
    "sign_agreement",
    "signed_rank_agreement",
    "pairwise_rank_agreement",
    "nonfinite",
    "chance_cosine",
    "chance_rank_correlation",
    "chance_feature_agreement",
]


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_explanation_agreement_equals_single_process(runs, method):
    """The torchmetrics agreement states are sums synced over the ranks: exact over 16 + 15 probes."""
    ddp, single = runs
    for metric in AGREEMENT:
        key = f"val/explain/{method}/{metric}"
        assert close(ddp["val_metrics"][key], single["val_metrics"][key]), (
            key,
            ddp["val_metrics"][key],
            single["val_metrics"][key],
        )


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_faithfulness_and_prediction_agreement_equal_single_process(runs, method):
    """Waits on the callback reducing sum and count over ranks (a mean of the two per-rank means is
    wrong for the uneven 16 / 15 shards)."""
    ddp, single = runs
    keys = [
        f"val/explain/{method}/{role}_{name}"
        for role in ("teacher", "student")
        for name in ("deletion_auc", "insertion_auc")
    ]
    for key in [*keys, "val/explain/prediction_agreement"]:
        assert close(ddp["val_metrics"][key], single["val_metrics"][key]), (
            key,
            ddp["val_metrics"][key],
            single["val_metrics"][key],
        )
    for role in ("teacher", "student"):  # noise differs per shard (see the module docstring)
        key = f"val/explain/{method}/{role}_infidelity"
        assert math.isfinite(ddp["val_metrics"][key]) and ddp["val_metrics"][key] >= 0


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_localisation_equals_single_process_and_stability_is_synced(runs, method):
    """Localisation: per-probe scores against index-determined masks, summed over ranks: exact.
    Stability: noise per shard (see the module docstring), but every rank took part in the sync."""
    ddp, single = runs
    for role in ("teacher", "student"):
        for name in ("localisation_mass", "localisation_topk"):
            key = f"val/explain/{method}/{role}_{name}"
            assert close(ddp["val_metrics"][key], single["val_metrics"][key]), (key, ddp["val_metrics"][key])
            assert 0.0 <= ddp["val_metrics"][key] <= 1.0
        sensitivity = ddp["val_metrics"][f"val/explain/{method}/{role}_sensitivity_max"]
        agreement = ddp["val_metrics"][f"val/explain/{method}/{role}_self_agreement"]
        assert math.isfinite(sensitivity) and sensitivity >= 0 and -1.0 <= agreement <= 1.0


def test_surrogate_is_fitted_on_every_probe(runs):
    """Waits on the callback gathering the probe inputs and student predictions of every rank
    before fitting the decision tree (else rank 0 fits its own 16 probes)."""
    ddp, single = runs
    for key in ("val/explain/surrogate/fidelity", "val/explain/surrogate/leaves"):
        assert close(ddp["val_metrics"][key], single["val_metrics"][key]), (
            key,
            ddp["val_metrics"][key],
            single["val_metrics"][key],
        )


def test_kdlight_cli_fit_runs_under_ddp(tmp_path):
    """``kdlight fit -c configs/digits/kd.yaml`` with 2 CPU processes, as a user starts it: the
    config's callbacks and logger, the CLI's config saving and fit summary, no collective left
    waiting on one rank (waits on kdlight/reporting/artifacts.py not calling ``trainer.log_dir``, a broadcast,
    from ``save_config``, which runs on rank 0 only)."""
    command = [
        sys.executable,
        "-m",
        "kdlight",
        "fit",
        "-c",
        str(REPO / "configs" / "digits" / "kd.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--model.init_args.teacher_checkpoint=null",
        "--model.init_args.teacher_as_given=true",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
    ]
    proc = run(command, tmp_path, timeout=180)  # about 15 s when it works
    assert proc.returncode == 0, proc.stderr[-6000:]
    run_dir = tmp_path / "runs" / "digits" / "kd"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.ckpt", "last.ckpt", "latest", "version_0"]  # one version
    run_dir = run_dir / "version_0"
    assert {"best.ckpt", "last.ckpt", "config.yaml", "metrics.csv"} <= {p.name for p in run_dir.iterdir()}
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(metrics.dropna(subset=["val/acc"])["epoch"]) == [0, 1]


def test_teacher_cache_under_ddp(tmp_path):
    """``teacher_cache: memory`` with 2 CPU processes: each rank caches the samples of its shards
    (sample by sample, see tests/test_cache.py) and training runs to the end."""
    command = [
        sys.executable,
        "-m",
        "kdlight",
        "fit",
        "-c",
        str(REPO / "configs" / "digits" / "kd.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--model.init_args.teacher_checkpoint=null",
        "--model.init_args.teacher_as_given=true",
        "--model.init_args.teacher_cache=memory",
        "--trainer.max_epochs=3",
        "--trainer.enable_progress_bar=false",
    ]
    proc = run(command, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-6000:]
    metrics = pd.read_csv(tmp_path / "runs" / "digits" / "kd" / "version_0" / "metrics.csv")
    epochs = metrics.dropna(subset=["train/loss_kd_epoch"])
    assert sorted(epochs["epoch"]) == [0, 1, 2] and epochs["train/loss_kd_epoch"].notna().all()
