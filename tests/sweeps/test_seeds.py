"""``python -m kdlight.sweeps.seeds``: fits per seed, resumes, tabulates mean ± std."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pandas as pd
import pytest

from kdlight.sweeps import seeds
from kdlight.sweeps.seeds import data_takes_seed, fit_arguments, main

from conftest import REPO

TEACHER = REPO / "configs" / "digits" / "teacher.yaml"
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
OUT = Path("runs/seeds/teacher")


def versions(run_dir: Path) -> list[str]:
    """The ``version_<n>`` directories of a run, sorted."""
    return sorted(p.name for p in run_dir.glob("version_*"))


def logged(run_dir: Path, metric: str) -> float:
    """``metric`` of a one-epoch run, read straight from its newest version's metrics.csv."""
    raw = pd.read_csv(run_dir / "latest" / "metrics.csv")
    return float(raw[metric].dropna().iloc[-1])


def fake_run(run_dir: Path, rows: list[dict]) -> None:
    """A completed fit written by hand: ``version_0/metrics.csv`` and the ``latest`` link."""
    (run_dir / "version_0").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run_dir / "version_0" / "metrics.csv", index=False)
    os.symlink("version_0", run_dir / "latest")


def test_two_seeds_table_resume_and_rerun_of_a_killed_seed(capsys):
    rows = main(["-c", str(TEACHER), "--seeds", "2", "--metrics", "val/acc", "val/loss", "--", *FAST])
    run_dirs = [OUT / "seed0", OUT / "seed1"]
    table = (OUT / "seeds.md").read_text()
    assert "Checkpoint: best by val/acc (max)" in table
    saved = pd.read_csv(OUT / "seeds.csv")
    for metric in ("val/acc", "val/loss"):
        values = [logged(d, metric) for d in run_dirs]
        assert saved[metric].tolist() == pytest.approx(values)
        assert [r[metric] for r in rows] == pytest.approx(values)
        assert f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" in table
    assert logged(run_dirs[0], "val/loss") != logged(run_dirs[1], "val/loss")  # the seeds differ
    assert table in capsys.readouterr().out

    main(["-c", str(TEACHER), "--seeds", "2", "--metrics", "val/acc", "val/loss", "--", *FAST])
    assert capsys.readouterr().out.count("skipped") == 2
    assert [versions(d) for d in run_dirs] == [["version_0"], ["version_0"]]

    (run_dirs[1] / "latest").unlink()  # as if seed 1 had been killed
    main(["-c", str(TEACHER), "--seeds", "2", "--metrics", "val/acc", "val/loss", "--", *FAST])
    out = capsys.readouterr().out
    assert "seed 0: skipped" in out and "seed 1: skipped" not in out
    assert [versions(d) for d in run_dirs] == [["version_0"], ["version_0", "version_1"]]
    assert pd.read_csv(OUT / "seeds.csv")["version"].tolist() == ["version_0", "version_1"]


EPOCHS = [  # best val/acc at epoch 1, last epoch 2; the explanation metric logged at epochs 0 and 2 only
    {"epoch": 0, "step": 9, "val/acc": 0.5, "val/explain/saliency/rank_correlation": 0.1},
    {"epoch": 1, "step": 19, "val/acc": 0.9},
    {"epoch": 2, "step": 29, "val/acc": 0.7, "val/explain/saliency/rank_correlation": 0.3},
]


@pytest.mark.parametrize(("checkpoint", "epoch", "acc"), [("best", 1, 0.9), ("last", 2, 0.7)])
def test_best_and_last_pick_different_rows(checkpoint, epoch, acc):
    fake_run(OUT / "seed0", EPOCHS)
    metric = "val/explain/saliency/rank_correlation"
    rows = main(["-c", str(TEACHER), "--seeds", "1", "--checkpoint", checkpoint, "--metrics", "val/acc", metric])
    assert rows[0]["epoch"] == epoch and rows[0]["val/acc"] == acc
    table = (OUT / "seeds.md").read_text()
    assert ("best by val/acc (max)" if checkpoint == "best" else "Checkpoint: last epoch") in table
    assert f"| 0 | seed0/version_0 | {epoch} | {acc:.4f}" in table
    if checkpoint == "best":  # not logged at the best epoch: the nearest logged one (earlier on ties), noted
        assert rows[0][metric] == 0.1 and f"{metric} from epoch 0 (not logged at epoch 1)" in table
    else:
        assert rows[0][metric] == 0.3


def test_unknown_metric_is_one_line_before_later_seeds_run(capsys):
    fake_run(OUT / "seed0", EPOCHS)
    with pytest.raises(SystemExit) as exit_info:
        main(["-c", str(TEACHER), "--seeds", "2", "--metrics", "val/accuracy", "--", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'val/accuracy'" in err and "did you mean val/acc" in err
    assert not (OUT / "seed1").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--checkpoint", "middle"], "invalid choice: 'middle'"),
        (["-c", "missing.yaml"], "config file missing.yaml does not exist"),
        (["--", "--run_dir=elsewhere"], "--run_dir is set per seed by this command"),
    ],
)
def test_bad_input_is_one_line_with_status_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-c", str(TEACHER), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_fit_arguments_seed_the_data_only_when_it_takes_a_seed(tmp_path):
    assert data_takes_seed([TEACHER])
    args = fit_arguments([TEACHER], 3, Path("out/seed3"), ["--trainer.max_epochs=1"], True)
    assert args == [
        "fit",
        "-c",
        str(TEACHER),
        "--seed_everything=3",
        "--data.init_args.seed=3",
        "--run_dir=out/seed3",
        "--trainer.max_epochs=1",
    ]
    unseeded = tmp_path / "unseeded.yaml"
    unseeded.write_text("data: {class_path: lightning.pytorch.demos.boring_classes.BoringDataModule}\n")
    assert not data_takes_seed([unseeded])
    assert "--data.init_args.seed=3" not in fit_arguments([unseeded], 3, Path("o"), [], False)


def test_a_distillation_config_keeps_the_teachers_data_split():
    """configs/digits/kd.yaml distils runs/digits/teacher/best.ckpt: changing the data seed would put
    the teacher's training samples into val/test (refused), so only seed_everything varies."""
    kd = REPO / "configs" / "digits" / "kd.yaml"
    assert seeds.distils_a_teacher_checkpoint([kd])
    assert not seeds.distils_a_teacher_checkpoint([REPO / "configs" / "digits" / "teacher.yaml"])
