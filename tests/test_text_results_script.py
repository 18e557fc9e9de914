"""scripts/text_results.py: a --quick end-to-end run on both text tasks, and its argument checks."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import text_results  # noqa: E402


def table_rows(markdown: str) -> dict[str, list[str]]:
    """``{model: [cells]}`` over every markdown table in ``markdown`` (header rows under key 'model')."""
    rows: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_unknown_task_is_one_line_naming_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        text_results.parse_args(["--tasks", "poems"])
    assert "unknown task(s) poems; valid tasks are: text_shortcut, tweets" in capsys.readouterr().err


def test_mass_on_is_the_share_of_absolute_attribution():
    maps = torch.tensor([[1.0, -3.0, 0.0], [2.0, 2.0, 0.0]])
    mask = torch.tensor([[False, True, False], [True, False, False]])
    torch.testing.assert_close(text_results.mass_on(maps, mask), torch.tensor([0.75, 0.5]))


def test_real_token_agreement_ignores_padding():
    teacher = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    same = text_results.real_token_agreement(teacher, teacher, valid)
    assert same == {"ig_rank_correlation": pytest.approx(1.0), "ig_top3": pytest.approx(1.0)}
    reversed_order = torch.tensor([[1.0, 2.0, 3.0, 9.0], [2.0, 1.0, 9.0, 9.0]])  # padding values never count
    out = text_results.real_token_agreement(reversed_order, teacher, valid)
    assert out["ig_rank_correlation"] == pytest.approx(-1.0) and out["ig_top3"] == pytest.approx(1.0)


@pytest.mark.slow
def test_quick_run_writes_both_task_tables(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nhand-written intro\n")
    argv = [
        "--quick",
        "--limit-batches",
        "1",
        "--eval-limit",
        "24",
        "--configs",
        "scratch,kd_hidden",
        "--output",
        str(out),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    try:
        text_results.main(argv)
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "hand-written intro" in text and text.count("<!-- BEGIN results:text -->") == 1
    rows = table_rows(text)
    shortcut_teacher, tweets_teacher = (text_results.TASKS[t]["teacher"] for t in ("text_shortcut", "tweets"))
    assert {shortcut_teacher, tweets_teacher, "CE only", "KD + hidden/attention matching", text_results.CHANCE} <= set(
        rows
    )
    assert rows[shortcut_teacher][5] == "100.0 %"  # top-1 agreement of the teacher with itself
    assert rows[shortcut_teacher][7] == "1.000"  # IG rank correlation with itself
    saved = json.loads((tmp_path / "runs" / "rows.json").read_text())
    for task in ("text_shortcut", "tweets"):
        names = [r["model"] for r in saved[task]["0"]]
        assert names[-1] == text_results.CHANCE and len(names) == 4
        assert (tmp_path / "runs" / task / "seed0" / "kd_hidden" / "best.ckpt").is_file()
    shortcut = saved["text_shortcut"]["0"]
    assert all(0.0 <= r["ig_rationale_mass"] + r["ig_cue_mass"] <= 1.0 + 1e-6 for r in shortcut)
