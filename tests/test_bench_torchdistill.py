"""scripts/bench section 1's torchdistill contender: the ratio row, and the skip when torchdistill is absent."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from statistics import median

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench import throughput, torchdistill_contender  # noqa: E402


def test_the_kdlight_vs_torchdistill_row_is_the_ratio_of_medians():
    tp = {"plain_tensors": [100.0, 110.0, 90.0], "torchdistill": [80.0, 90.0, 85.0], "kdlight": [70.0, 60.0, 65.0]}
    rows = {row[1]: row for row in throughput.rows("digits", tp)}
    (label,) = [name for name in rows if "vs torchdistill" in name]
    assert float(rows[label][4]) == pytest.approx(median(tp["kdlight"]) / median(tp["torchdistill"]), abs=0.005)


@pytest.mark.skipif(importlib.util.find_spec("torchdistill") is not None, reason="torchdistill is installed here")
def test_without_torchdistill_the_rows_are_skipped_with_a_note(monkeypatch):
    monkeypatch.delenv(torchdistill_contender.ENV_PYTHON, raising=False)
    contender = torchdistill_contender.Contender(Namespace(device="cpu", threads=1))
    assert contender.skipped.startswith("torchdistill rows skipped: torchdistill is not importable here")
