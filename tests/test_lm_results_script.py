"""scripts/lm_results.py: its measures against direct computations, a --quick end-to-end run, its argument checks."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import lm_results  # noqa: E402


def test_token_scores_count_only_labelled_positions():
    v = 7
    student = torch.zeros(1, 3, v)  # uniform: perplexity v wherever it is scored
    student[0, 2] = torch.arange(v).float() * 5  # a peaked row at a position that does not count
    teacher = torch.zeros(1, 3, v)
    teacher[0, :, 3] = 2.0
    labels = torch.tensor([[1, 4, -100]])
    scores = lm_results.token_scores(student, teacher, labels)
    p_t = torch.softmax(teacher[0, 0], -1)
    kl = (p_t * (p_t.log() - math.log(1 / v))).sum().item()
    assert scores["ppl"] == pytest.approx(v)
    assert scores["kl"] == pytest.approx(kl, rel=1e-5)
    assert scores["agreement"] == pytest.approx(0.0)  # uniform argmax is token 0, the teacher's is 3


def test_the_span_perplexity_counts_only_the_generated_span():
    v, t = 5, 128
    logits = torch.zeros(1, t, v)
    logits[0, 31:63, 2] = math.log(4.0)  # p(2) = 4/8 = 1/2 inside the span, uniform outside
    labels = torch.full((1, t), 2)
    labels[0, -1] = -100
    scores = lm_results.token_scores(logits, logits, labels)
    assert scores["ppl_span"] == pytest.approx(2.0)
    assert scores["ppl"] == pytest.approx(math.exp((32 * math.log(2) + 95 * math.log(5)) / 127))


def test_probe_chunks_only_take_chunks_with_every_explained_position_labelled():
    labels = torch.zeros(6, 128, dtype=torch.long)
    labels[1, 126] = -100  # the last explained position does not count: never a probe
    labels[4, 40:] = -100  # a short final chunk of a file
    chosen = lm_results.probe_chunks(torch.zeros_like(labels), labels, count=10, seed=0)
    assert chosen.tolist() == [0, 2, 3, 5]
    assert len(lm_results.probe_chunks(torch.zeros_like(labels), labels, count=2, seed=0)) == 2


def test_context_agreement_compares_only_the_context_of_each_position():
    positions = len(lm_results.POSITIONS)
    teacher = torch.rand(positions, 2, 128) + 0.1
    same = lm_results.context_agreement(teacher.clone(), teacher)
    assert same == {"ctx_rank_correlation": pytest.approx(1.0), "ctx_top5": pytest.approx(1.0)}
    noise_after = teacher.clone()
    for p, t in enumerate(lm_results.POSITIONS):
        noise_after[p, :, t + 1 :] = torch.rand_like(noise_after[p, :, t + 1 :]) * 100  # after the position
    assert lm_results.context_agreement(noise_after, teacher) == same
    reversed_ranks = 1.0 / teacher
    assert lm_results.context_agreement(reversed_ranks, teacher)["ctx_rank_correlation"] == pytest.approx(-1.0)


def test_bad_probe_count_is_one_line(capsys):
    with pytest.raises(SystemExit):
        lm_results.parse_args(["--probes", "0"])
    assert "--probes must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_writes_the_lm_table(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nhand-written intro\n")
    argv = ["--quick", "--limit-batches", "1", "--probes", "2", "--configs", "fkl,on_policy"]
    argv += ["--output", str(out), "--runs-dir", str(tmp_path / "runs")]
    try:
        section = lm_results.main(argv)
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "hand-written intro" in text and section in text
    for label in ("teacher (4 layers, d=128)", "forward KL", "on-policy GKD (lmbda 0.5, JSD 0.5)", lm_results.CHANCE):
        assert f"| {label} |" in section
    rows = json.loads((tmp_path / "runs" / "rows.json").read_text())["rows"]["0"]
    teacher = rows[0]
    assert teacher["agreement"] == 1.0 and teacher["kl"] == pytest.approx(0.0, abs=1e-6)
    assert teacher["ctx_rank_correlation"] == pytest.approx(1.0)
