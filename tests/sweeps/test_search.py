"""``python -m kdlight.sweeps.search``: Optuna trials, resume, Pareto front, one-line bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib
import optuna
import pandas as pd
import pytest
import yaml

from kdlight.sweeps import space as search_space
from kdlight.sweeps.search import chance_name, main, pareto_figure, read_trial, resolved_config, wandb_overrides

from conftest import REPO

TEACHER = REPO / "configs" / "digits" / "teacher.yaml"
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
LR = "model.init_args.optimizer.init_args.lr"


def space(text: str) -> str:
    Path("space.yaml").write_text(text)
    return "space.yaml"


def search(*args: str) -> list[dict]:
    return main(["-c", str(TEACHER), *args, "--", *FAST])


def logged(run_dir: Path, metric: str) -> float:
    """``metric`` of a one-epoch run, read straight from its newest version's metrics.csv."""
    return float(pd.read_csv(run_dir / "latest" / "metrics.csv")[metric].dropna().iloc[-1])


def test_single_objective_matches_each_run_and_resumes(capsys):
    lr_space = space(f"{LR}: {{float: [1.0e-4, 1.0e-1], log: true}}\n")
    out = Path("runs/search/teacher")
    search("--space", lr_space, "--trials", "3")
    table = pd.read_csv(out / "trials.csv")
    assert table["number"].tolist() == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert table["val/acc"].tolist() == pytest.approx([logged(out / f"trial{n}", "val/acc") for n in range(3)])
    assert table[LR].nunique() == 3
    best = table.loc[table["val/acc"].idxmax()]
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{out / 'study.db'}")
    assert study.best_value == pytest.approx(table["val/acc"].max())
    assert f"| {study.best_trial.number} | COMPLETE | {best[LR]:.4g} |" in (out / "best.md").read_text()
    assert "best epoch by val/acc (max)" in capsys.readouterr().out

    # --trials is the total: a rerun adds the missing trial only, the first three are not fitted again
    rows = search("--space", lr_space, "--trials", "4")
    assert "3 finished trial(s), running 1 more" in capsys.readouterr().out
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    assert sorted(p.name for p in (out / "trial0").glob("version_*")) == ["version_0"]
    assert pd.read_csv(out / "trials.csv")["val/acc"][:3].tolist() == pytest.approx(table["val/acc"].tolist())
    search("--space", lr_space, "--trials", "4")
    assert "none to run" in capsys.readouterr().out


def test_two_objectives_front_is_non_dominated_and_drawn(capsys):
    out = Path("two")
    lr_space = space(f"{LR}: {{float: [1.0e-4, 1.0e-1], log: true}}\n")
    search("--space", lr_space, "--trials", "3", "--metric", "val/acc:max", "--metric", "val/loss:min", "--out", "two")
    table = pd.read_csv(out / "trials.csv")
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{out / 'study.db'}")
    front = {t.number for t in study.best_trials}

    def dominates(a, b) -> bool:  # a at least as good in both (acc up, loss down) and better in one
        at_least = a["val/acc"] >= b["val/acc"] and a["val/loss"] <= b["val/loss"]
        return at_least and (a["val/acc"] > b["val/acc"] or a["val/loss"] < b["val/loss"])

    rows = table.to_dict("records")
    for row in rows:
        dominated = any(dominates(other, row) for other in rows)
        assert dominated == (row["number"] not in front)
    best = (out / "best.md").read_text()
    assert "Pareto front" in best and all(f"| {n} | COMPLETE |" in best for n in front)
    assert (out / "pareto.png").stat().st_size > 0

    # the stored study is for this space: another one is refused in one line
    other = space(f"{LR}: {{float: [1.0e-3, 1.0e-2]}}\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        search("--space", other, "--trials", "4", "--metric", "val/acc:max", "--metric", "val/loss:min", "--out", "two")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was made for another space" in err
    assert len(study.trials) == 3


@pytest.mark.parametrize(
    ("space_text", "extra", "message"),
    [
        (
            "model.init_args.optimizer.init_args.learning_rate: {float: [0.001, 0.01]}",
            [],
            f"'model.init_args.optimizer.init_args.learning_rate' is not a key of this config; close: {LR}",
        ),
        (f"{LR}: {{float: [0.01, 0.001]}}", [], "empty range [0.01, 0.001]"),
        (f"{LR}: {{categorical: []}}", [], "categorical needs a non-empty list"),
        (f"{LR}: {{uniform: [0, 1]}}", [], "give one of"),
        (f"{LR}: {{float: [0.001, 0.01]}}", ["--metric", "val/accuracy:max"], "did you mean val/acc"),
        (
            f"{LR}: {{float: [0.001, 0.01]}}",
            ["--metric", "val/acc:max", "--metric", "val/loss:min", "--prune"],
            "--prune works with a single --metric",
        ),
        (f"{LR}: {{float: [0.001, 0.01]}}", ["--metric", "val/acc"], "must be NAME:max or NAME:min"),
    ],
)
def test_bad_input_is_one_line_with_status_2(space_text, extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search("--space", space(space_text), "--trials", "1", *extra)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error:" in line]
    assert len(err) == 1 and message in err[0]


def test_several_devices_are_refused(capsys):
    lr_space = space(f"{LR}: {{float: [0.001, 0.01]}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["-c", str(TEACHER), "--space", lr_space, "--trials", "1", "--", "--trainer.devices=2"])
    assert exit_info.value.code == 2
    assert "single-device trainers only (trainer.devices=2" in capsys.readouterr().err
    assert not Path("runs/search/teacher/trial0").exists()


def test_prune_reports_each_epoch_to_optuna():
    lr_space = space(f"{LR}: {{float: [0.001, 0.01]}}\n")
    rows = search("--space", lr_space, "--trials", "1", "--prune")
    study = optuna.load_study(study_name="teacher", storage="sqlite:///runs/search/teacher/study.db")
    assert study.trials[0].intermediate_values == {0: pytest.approx(rows[0]["val/acc"])}


def test_a_pruned_trial_is_recorded_and_the_search_goes_on(monkeypatch):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    rows = search("--space", space(f"{LR}: {{float: [0.001, 0.01]}}\n"), "--trials", "2", "--prune")
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"]
    assert not (Path("runs/search/teacher/trial0") / "latest").exists()  # the fit stopped before completing
    assert "no complete trial yet" in Path("runs/search/teacher/best.md").read_text()


def test_a_misspelled_metric_can_be_corrected_on_the_same_study(capsys):
    lr_space = space(f"{LR}: {{float: [0.001, 0.01]}}\n")
    with pytest.raises(SystemExit):
        search("--space", lr_space, "--trials", "1", "--metric", "val/accuracy:max")
    rows = search("--space", lr_space, "--trials", "1", "--metric", "val/acc:max")
    assert "made again for this search" in capsys.readouterr().out
    assert [(r["number"], r["state"]) for r in rows] == [(0, "COMPLETE")]


def test_wandb_logger_gets_study_and_trial_tags():
    config = resolved_config([TEACHER, REPO / "configs" / "logger" / "wandb.yaml"], [])
    assert wandb_overrides(config, "kd", 3) == ['--trainer.logger.init_args.tags=["kd", "trial3"]']
    assert wandb_overrides(resolved_config([TEACHER], []), "kd", 3) == []


def test_pareto_figure_marks_the_chance_level(monkeypatch, tmp_path):
    metric = "val/explain/saliency/rank_correlation"
    assert chance_name(metric) == "val/explain/saliency/chance_rank_correlation"
    assert chance_name("val/acc") is None
    rows = [
        {"number": 0, "state": "COMPLETE", "val/acc": 0.9, metric: 0.2},
        {"number": 1, "state": "COMPLETE", "val/acc": 0.7, metric: 0.5},
        {"number": 2, "state": "COMPLETE", "val/acc": 0.6, metric: 0.1},
    ]
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    pareto_figure(rows, rows[:2], [("val/acc", "max"), (metric, "max")], {metric: 0.05}, tmp_path / "p.png")
    lines = drawn[0].axes[0].get_lines()
    assert [tuple(line.get_ydata()) for line in lines if line.get_linestyle() == "--"] == [(0.05, 0.05)]


def test_metrics_are_read_at_the_best_epoch_by_the_first_metric():
    import os

    metric, chance = "val/explain/saliency/rank_correlation", "val/explain/saliency/chance_rank_correlation"
    rows = [  # best val/acc at epoch 1; the explanation metric logged at epochs 0 and 2 only
        {"epoch": 0, "step": 9, "val/acc": 0.5, "val/loss": 1.0, metric: 0.1, chance: 0.01},
        {"epoch": 1, "step": 19, "val/acc": 0.9, "val/loss": 0.4},
        {"epoch": 2, "step": 29, "val/acc": 0.7, "val/loss": 0.3, metric: 0.3, chance: 0.02},
    ]
    Path("t/version_0").mkdir(parents=True)
    pd.DataFrame(rows).to_csv("t/version_0/metrics.csv", index=False)
    os.symlink("version_0", "t/latest")
    got = read_trial(Path("t"), [("val/acc", "max"), ("val/loss", "min"), (metric, "max")])
    assert got["epoch"] == 1 and got["values"] == {"val/acc": 0.9, "val/loss": 0.4, metric: 0.1}
    assert got["chance"] == {metric: 0.01} and got["notes"] == [f"{metric} from epoch 0 (not logged at epoch 1)"]
    assert read_trial(Path("t"), [("val/loss", "min")])["epoch"] == 2


def test_seeds_of_best_trial_mean_std_and_resume(capsys):
    lr_space = space(f"{LR}: {{float: [1.0e-4, 1.0e-1], log: true}}\n")
    out = Path("runs/search/teacher")
    search("--space", lr_space, "--trials", "2", "--seeds-of-best", "2", "--metric", "val/acc:max")
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{out / 'study.db'}")
    best = study.best_trial
    run_dirs = [out / "seeds" / f"trial{best.number}" / f"seed{s}" for s in range(2)]
    assert sorted(p.name for p in (out / "seeds").iterdir()) == [f"trial{best.number}"]
    for seed, run_dir in enumerate(run_dirs):  # each seed ran with the trial's value and its own seed
        config = yaml.safe_load((run_dir / "latest" / "config.yaml").read_text())
        assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(best.params[LR])
        assert config["seed_everything"] == seed and config["data"]["init_args"]["seed"] == seed
    values = [logged(d, "val/acc") for d in run_dirs]
    table = (out / "seeds_of_best.md").read_text()
    assert "Checkpoint: best by val/acc (max)" in table and "2 seed(s) each" in table
    expected = (
        f"| {best.number} | {best.params[LR]:.4g} | {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} |"
    )
    assert expected in table.splitlines()
    assert pd.read_csv(out / "seeds_of_best.csv")["val/acc"].tolist() == pytest.approx(values)
    assert table in capsys.readouterr().out

    # resumable: a rerun skips the finished seeds and fits no trial
    search("--space", lr_space, "--trials", "2", "--seeds-of-best", "2", "--metric", "val/acc:max")
    out_text = capsys.readouterr().out
    assert out_text.count("skipped") == 2 and "none to run" in out_text
    assert [sorted(p.name for p in d.glob("version_*")) for d in run_dirs] == [["version_0"], ["version_0"]]
    assert (out / "seeds_of_best.md").read_text() == table


def test_seeds_of_best_runs_every_pareto_trial():
    lr_space = space(f"{LR}: {{float: [1.0e-4, 1.0e-1], log: true}}\n")
    search(
        "--space", lr_space, "--trials", "3", "--metric", "val/acc:max", "--metric", "val/loss:min",
        "--out", "two", "--seeds-of-best", "2",
    )  # fmt: skip
    study = optuna.load_study(study_name="teacher", storage="sqlite:///two/study.db")
    front = sorted(t.number for t in study.best_trials)
    assert sorted(p.name for p in Path("two/seeds").iterdir()) == [f"trial{n}" for n in front]
    lines = Path("two/seeds_of_best.md").read_text().splitlines()
    assert "Pareto-front trials" in lines[0]
    rows = [line for line in lines if line.startswith("| ") and line.split(" | ")[0][2:].isdigit()]
    assert [int(line.split(" | ")[0][2:]) for line in rows] == front
    for number, line in zip(front, rows):
        run_dirs = [Path("two/seeds") / f"trial{number}" / f"seed{s}" for s in range(2)]
        for metric in ("val/acc", "val/loss"):
            values = [logged(d, metric) for d in run_dirs]
            assert f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds-of-best", "-1"], "--seeds-of-best must be at least 1"),
        (["--seeds-of-best", "2", "--", "--seed_everything=3"], "--seed_everything is set per seed"),
    ],
)
def test_seeds_of_best_bad_input(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-c", str(TEACHER), "--space", space(f"{LR}: {{float: [0.001, 0.01]}}\n"), "--trials", "1", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_key_into_a_list_overrides_the_whole_list_with_that_item_changed():
    """A Composite's terms are a list the CLI cannot index: the trial overrides the whole list."""
    config = search_space.flatten(
        {
            "model": {
                "init_args": {
                    "objective": {
                        "init_args": {
                            "terms": [
                                {
                                    "class_path": "kdlight.objectives.KD",
                                    "init_args": {"temperature": 4.0, "alpha": 0.9},
                                },
                                {
                                    "class_path": "kdlight.objectives.ExplanationMatching",
                                    "init_args": {"kind": "saliency", "weight": 10.0},
                                },
                            ]
                        }
                    }
                }
            },
            "trainer": {"max_epochs": 3},
        }
    )
    key = "model.init_args.objective.init_args.terms.1.init_args.weight"
    assert key in config and search_space.list_prefix(key, config) == "model.init_args.objective.init_args.terms"
    params = {
        key: 2.5,
        "model.init_args.objective.init_args.terms.0.init_args.temperature": 2.0,
        "trainer.max_epochs": 5,
    }
    out = search_space.overrides(params, config)
    assert out[0] == "--trainer.max_epochs=5"
    name, value = out[1].split("=", 1)
    assert name == "--model.init_args.objective.init_args.terms"
    terms = json.loads(value)
    assert terms[0]["init_args"] == {"temperature": 2.0, "alpha": 0.9}
    assert terms[1]["init_args"] == {"kind": "saliency", "weight": 2.5}
    assert config["model.init_args.objective.init_args.terms.1.init_args.weight"] == 10.0  # the config is not changed


def test_the_shipped_search_space_names_keys_of_its_config():
    space = search_space.parse_space(REPO / "configs" / "spaces" / "shortcut_kd_explain.yaml")
    config = resolved_config([REPO / "configs" / "shortcut" / "kd_explain.yaml"], [])
    search_space.check_keys(space, config)  # raises on a key the config does not have
    assert len(space) == 3
