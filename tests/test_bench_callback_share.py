"""scripts/bench section 2 (the explanation callback's share of fit): the profiler that splits its
time, the text workload's config handling, and the table rows computed from measured walls."""

from __future__ import annotations

import sys
import time
import types
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench import callback_share  # noqa: E402
from bench.config_fits import ARTIFACTS, FIGURE_HTML, FIGURE_PNG, RUN, PartTimer, ShippedConfig, config_fit  # noqa: E402

TEXT_KD = {
    "seed_everything": 0,
    "trainer": {
        "max_epochs": 1,
        "callbacks": [
            {
                "class_path": "kdlight.explain.ExplanationAgreement",
                "init_args": {
                    "methods": ["integrated_gradients", "occlusion"],
                    "num_probes": 8,
                    "method_args": {"integrated_gradients": {"n_steps": 4}},
                    "num_images": 2,
                },
            }
        ],
    },
    "data": {"class_path": "kdlight.data.ShortcutText", "init_args": {"batch_size": 32, "num_samples": 120}},
    "model": {
        "class_path": "kdlight.DistillationModule",
        "init_args": {
            "teacher": {
                "class_path": "kdlight.models.TransformerClassifier",
                "init_args": {
                    "vocab_size": 128,
                    "num_classes": 4,
                    "d_model": 16,
                    "depth": 1,
                    "heads": 2,
                    "max_length": 20,
                },
            },
            "student": {
                "class_path": "kdlight.models.TransformerClassifier",
                "init_args": {
                    "vocab_size": 128,
                    "num_classes": 4,
                    "d_model": 8,
                    "depth": 1,
                    "heads": 2,
                    "max_length": 20,
                },
            },
            "objective": {"class_path": "kdlight.objectives.KD"},
        },
    },
}


@pytest.fixture
def keep_threads_and_determinism():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_part_timer_counts_nested_actions_once():
    timer = PartTimer({"outer": RUN}, "cpu")
    with timer.profile("outer"):
        with timer.profile("kdlight.a"):
            time.sleep(0.02)
            with timer.profile("kdlight.b"):
                time.sleep(0.1)
        with timer.profile("lightning.not_timed"):
            pass
    totals = timer.totals
    assert totals["kdlight.b"] >= 0.1
    assert 0.02 <= totals["kdlight.a"] < totals["kdlight.b"]  # self time: b's sleep is not a's
    # the inclusive run holds both, each once
    assert totals[RUN] >= totals["kdlight.a"] + totals["kdlight.b"]
    assert totals[RUN] - (totals["kdlight.a"] + totals["kdlight.b"]) < 0.05
    assert timer.counts == {"kdlight.a": 1, "kdlight.b": 1, RUN: 1}


def test_part_timer_times_module_functions_and_restores_them():
    module = types.ModuleType("drawing")

    def draw(x: int) -> int:
        return x + 1

    module.draw = draw
    timer = PartTimer({}, "cpu")
    with timer.timing(module, {"draw": FIGURE_PNG}):
        assert module.draw(1) == 2 and module.draw(2) == 3
    assert module.draw is draw
    assert timer.counts == {FIGURE_PNG: 2}


def test_text_config_path_default_none_and_relative(tmp_path, monkeypatch):
    assert callback_share.text_config_path(Namespace()) == callback_share.TEXT_YAML
    assert callback_share.text_config_path(Namespace(text_config="none")) is None
    monkeypatch.chdir(tmp_path)
    assert callback_share.text_config_path(Namespace(text_config="t.yaml")) == tmp_path / "t.yaml"


def test_shipped_config_refuses_missing_file_and_missing_callback(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config file"):
        ShippedConfig.load(tmp_path / "absent.yaml")
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"trainer": {"callbacks": []}}))
    with pytest.raises(ValueError, match="has 0 kdlight.explain.ExplanationAgreement callbacks"):
        ShippedConfig.load(bare)


def fake_workload(path: Path, without: list[float], shipped: list[float]) -> dict:
    ship = ShippedConfig(config={"trainer": {"max_epochs": 4}}, explain_args={"num_probes": 8}, path=path)
    fit = {
        "totals": {RUN: 0.3, "kdlight.explain.attribution": 0.1, ARTIFACTS: 0.1, FIGURE_PNG: 0.04, FIGURE_HTML: 0.02},
        "counts": {RUN: 2},
    }
    return {
        "walls": {"without": without, "shipped": shipped},
        "parts": {"without": [], "shipped": [fit] * len(shipped)},
        "settings": {"without": (None, 4), "shipped": (ship.explain_args, 4)},
        "ship": ship,
        "epochs": 4,
        "repeats": len(shipped),
    }


def test_rows_give_each_workloads_share_and_parts():
    cb = {
        "digits": fake_workload(Path("kd.yaml"), without=[1.0, 1.2], shipped=[1.05, 1.3]),
        "text": fake_workload(Path("text.yaml"), without=[4.0, 4.4], shipped=[5.0, 5.5]),
    }
    rows = callback_share.rows(cb)
    shipped = {r[1].startswith("[text]"): r for r in rows if "ExplanationAgreement shipped" in r[1]}
    # share of the fastest fits (paired median in brackets): digits 0.05/1.05, text 1/5
    assert shipped[False][4] == f"{100 * 0.05 / 1.05:.1f} % ({100 * 0.5 * (0.05 / 1.05 + 0.1 / 1.3):.1f} %)"
    assert shipped[False][5] == "<= 10 %: met"
    assert shipped[True][4] == "20.0 % (20.0 %)"
    assert shipped[True][5] == "<= 10 % (the digits goal): NOT met"
    text_parts = {r[1].strip(): r for r in rows if r[1].startswith("[text]   part:")}
    # per fit: 0.3 s of runs + 0.1 s of artifacts; the PNG (0.04 s) and HTML (0.02 s) are part of the artifacts
    assert text_parts["[text]   part: attribution maps (the student's, every run)"][4] == "25 %"
    assert text_parts["[text]   part: rest of run (probe batch, predictions, metrics, logging)"][4] == "50 %"
    artifacts = [r for r in text_parts.values() if "artifacts" in r[1]]
    assert [r[2] for r in artifacts] == ["100 ms/fit"]
    assert "heatmap PNG + token HTML page" in artifacts[0][1]
    figures = [r[2:5] for r in text_parts.values() if "of which" in r[1]]
    assert figures == [("40 ms/fit", "callback time per fit", "10 %"), ("20 ms/fit", "callback time per fit", "5 %")]


def test_rows_say_why_the_text_workload_is_missing():
    cb = {"digits": fake_workload(Path("kd.yaml"), [1.0], [1.1]), "text_skipped": "text workload skipped: x"}
    assert callback_share.rows(cb)[-1][1] == "[text] text workload skipped: x"


@pytest.mark.slow  # a real 1-epoch fit built by the CLI: 2-3.5 s on 2 shared cores
def test_text_fit_reports_the_token_figures(tmp_path, keep_threads_and_determinism):
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(TEXT_KD))
    ship = ShippedConfig.load(path)
    wall, parts = config_fit(Namespace(device="cpu"), ship, ship.explain_args, 1)
    totals = parts["totals"]
    assert parts["counts"][RUN] == 1  # the last epoch is explained
    assert totals[FIGURE_PNG] > 0 and totals[FIGURE_HTML] > 0
    assert totals[ARTIFACTS] >= totals[FIGURE_PNG] + totals[FIGURE_HTML]
    assert totals[RUN] + totals[ARTIFACTS] < wall
    assert totals[RUN] >= totals["kdlight.explain.attribution"] + totals["kdlight.explain.teacher_side"]
