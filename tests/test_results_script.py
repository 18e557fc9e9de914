"""scripts/results.py and scripts/shortcut_benchmark.py: tiny end-to-end runs and argument checks."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import results  # noqa: E402
import shortcut_benchmark  # noqa: E402


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(markdown: str) -> dict[str, list[str]]:
    """``{model: [cells]}`` of the markdown table in ``markdown`` (header row under key 'model')."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_results_script_tiny_run_writes_the_table(tmp_path, keep_threads):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nhand-written intro\n")
    argv = [
        "--dataset",
        "digits",
        "--quick",
        "--limit-batches",
        "1",
        "--eval-limit",
        "32",
        "--configs",
        "scratch",
        "--output",
        str(out),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    results.main(argv)
    text = out.read_text()
    assert "hand-written intro" in text  # the rest of the file is kept
    assert "<!-- BEGIN results:digits -->" in text and "<!-- END results:digits -->" in text
    assert "Command: `python scripts/results.py " + " ".join(argv[:4]) in text
    rows = table_rows(text)
    assert rows["model"] == [
        "params",
        "test acc",
        "macro-F1",
        "top-1 agreement",
        "KL(t‖s)",
        "saliency rank corr.",
        "IG cosine",
    ]
    assert set(rows) == {"model", "teacher (CNN)", "scratch (MLP)", "untrained MLP (chance)"}
    assert all(len(cells) == 7 for cells in rows.values())
    assert rows["teacher (CNN)"][3] == "100.0 %"  # agrees with itself
    assert (tmp_path / "runs" / "seed0" / "scratch" / "best.ckpt").is_file()
    saved = json.loads((tmp_path / "runs" / "rows.json").read_text())
    assert [r["model"] for r in saved["0"]] == ["teacher (CNN)", "scratch (MLP)", "untrained MLP (chance)"]

    results.main(argv)  # a second run replaces the section instead of appending one
    assert out.read_text().count("<!-- BEGIN results:digits -->") == 1


def test_shortcut_benchmark_tiny_run_writes_the_table(tmp_path, keep_threads):
    out = tmp_path / "RESULTS.md"
    argv = [
        "--quick",
        "--limit-batches",
        "1",
        "--eval-limit",
        "32",
        "--output",
        str(out),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    shortcut_benchmark.main(argv)
    text = out.read_text()
    assert "<!-- BEGIN results:shortcut -->" in text
    assert "Command: `python scripts/shortcut_benchmark.py --quick" in text
    rows = table_rows(text)
    assert rows["model"][0] == "params"
    assert rows["model"][1:] == [h for _, h, _ in shortcut_benchmark.COLUMNS]
    assert set(rows) == {"model", *(label for _, label in shortcut_benchmark.RUNS), shortcut_benchmark.CHANCE}
    assert all(len(cells) == 1 + len(shortcut_benchmark.COLUMNS) for cells in rows.values())
    for model, cells in rows.items():  # every cell is a number (percent or plain)
        if model == "model":
            continue
        for cell in cells[1:]:
            float(cell.replace(" %", "").split(" ± ")[0])


def test_cue_mass_is_the_share_of_attribution_in_the_mask():
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    maps = torch.tensor([[[[3.0, -1.0], [0.0, 0.0]]], [[[0.0, 0.0], [2.0, 2.0]]]])
    assert torch.allclose(shortcut_benchmark.cue_mass(maps, mask), torch.tensor([0.75, 0.0]))


def test_run_overrides_redirect_every_output_and_set_the_seed(tmp_path):
    args = results.run_overrides(
        REPO / "configs/digits/kd.yaml", tmp_path / "run", 7, teacher_checkpoint=tmp_path / "t.ckpt", epochs=3
    )
    assert "--seed_everything=7" in args and "--data.init_args.seed=7" in args
    assert f"--run_dir={tmp_path / 'run'}" in args  # the one knob: logs and checkpoints follow it
    assert f"--model.init_args.teacher_checkpoint={tmp_path / 't.ckpt'}" in args
    assert "--trainer.max_epochs=3" in args and "--trainer.enable_progress_bar=false" in args
    callbacks = json.loads(next(a for a in args if a.startswith("--trainer.callbacks=")).split("=", 1)[1])
    assert [c["class_path"].rsplit(".", 1)[1] for c in callbacks] == [
        "ModelCheckpoint",
        "ModelCheckpoint",
    ]  # best, last
    kept = results.run_overrides(REPO / "configs/digits/kd.yaml", tmp_path, 0, explain_callback=True)
    assert "ExplanationAgreement" in next(a for a in kept if a.startswith("--trainer.callbacks="))
    # a ClassifierModule config takes no teacher checkpoint
    scratch = results.run_overrides(
        REPO / "configs/digits/scratch.yaml", tmp_path, 0, teacher_checkpoint=tmp_path / "t.ckpt"
    )
    assert not any("teacher_checkpoint" in a for a in scratch)


def test_mean_std_formatting():
    assert results.mean_std([0.5, 0.7], percent=True) == "60.0 ± 14.1 %"
    assert results.mean_std([0.25]) == "0.250"
    assert results.mean_std([float("nan")]) == "n/a"


def test_write_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "R.md"
    results.write_section(path, "a", "first")
    results.write_section(path, "b", "other")
    results.write_section(path, "a", "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text
    assert text.index("second") < text.index("other")


def test_unknown_dataset_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as info:
        results.main(["--dataset", "cifar"])
    assert info.value.code == 2
    assert "valid datasets are: digits, mnist1d" in capsys.readouterr().err


@pytest.mark.parametrize("script", [results, shortcut_benchmark], ids=["results", "shortcut_benchmark"])
@pytest.mark.parametrize("option", ["--seeds", "--epochs", "--limit-batches"])
def test_counts_below_one_are_refused(script, option, capsys):
    argv = (["--dataset", "digits"] if script is results else []) + [option, "0"]
    with pytest.raises(SystemExit) as info:
        script.main(argv)
    assert info.value.code == 2
    assert f"{option} must be >= 1, got 0" in capsys.readouterr().err


def test_unknown_config_and_bad_cue_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        results.main(["--dataset", "digits", "--configs", "kd,nope"])
    assert "unknown config(s) nope; valid configs are: teacher, scratch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shortcut_benchmark.main(["--cue-strength", "1.5"])
    assert "--cue-strength must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shortcut_benchmark.main(["--cue-region", "middle"])
    assert "valid regions are: sides, border" in capsys.readouterr().err
