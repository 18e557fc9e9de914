"""Per-position validation curves of the LM modules: values by hand, epoch means, rank sums, tables, empty epochs."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from test_lm_module import LENGTH, PAD, CausalMean, LMSplit, TinyLMData, adam, synthetic_ids

from kdlight.training import LMDistillationModule, LMModule
from kdlight.training.lm_positions import TABLE_COLUMNS, PositionCurves

from conftest import tiny_trainer


def distiller() -> LMDistillationModule:
    torch.manual_seed(0)
    return LMDistillationModule(CausalMean(dim=16), CausalMean(dim=4), optimizer=adam, teacher_as_given=True)


def by_hand(student, teacher, ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position sums in float64, straight from the definitions (position t predicts token t + 1)."""
    counted = (labels != -100).double()
    with torch.no_grad():
        log_ps = torch.log_softmax(student(ids).double(), -1)
        log_pt = torch.log_softmax(teacher(ids).double(), -1) if teacher is not None else None
    ce = -log_ps.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    sums = {"tokens": counted.sum(0), "ce": (ce * counted).sum(0)}
    if log_pt is not None:
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
        agree = (log_ps.argmax(-1) == log_pt.argmax(-1)).double()
        sums["kl"], sums["agree"] = (kl * counted).sum(0), (agree * counted).sum(0)
    return sums


def test_distillation_curves_equal_the_definitions_and_average_to_the_epoch_values():
    lm, data = distiller(), TinyLMData(n=20, batch_size=8)  # batches 8, 8, 4
    (results,) = tiny_trainer().validate(lm, datamodule=data, verbose=False)
    split = data.splits["val"]
    sums = by_hand(lm.student, lm.teacher, split.ids, split.labels)
    curves = lm.per_position["val"]
    kept = sums["tokens"] > 0
    assert not kept[-1] and torch.equal(curves["position"], torch.arange(LENGTH)[kept])
    torch.testing.assert_close(curves["tokens"], sums["tokens"][kept])
    n = sums["tokens"][kept]
    torch.testing.assert_close(curves["student_ce"], sums["ce"][kept] / n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(curves["student_ppl"], (sums["ce"][kept] / n).exp(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(curves["kl"], sums["kl"][kept] / n, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(curves["agreement"], sums["agree"][kept] / n)
    total = curves["tokens"].sum()
    assert (curves["tokens"] * curves["student_ce"]).sum() / total == pytest.approx(results["val/loss"], rel=1e-5)
    assert (curves["tokens"] * curves["kl"]).sum() / total == pytest.approx(results["val/kl"], rel=1e-5)
    assert (curves["tokens"] * curves["agreement"]).sum() / total == pytest.approx(results["val/agreement"], abs=1e-6)


def test_lm_module_test_curves_equal_the_definitions():
    torch.manual_seed(0)
    lm, data = LMModule(CausalMean(dim=8)), TinyLMData(n=12, batch_size=5)
    (results,) = tiny_trainer().test(lm, datamodule=data, verbose=False)
    split = data.splits["test"]
    sums = by_hand(lm.model, None, split.ids, split.labels)
    curves, kept = lm.per_position["test"], sums["tokens"] > 0
    assert set(curves) == {"position", "tokens", "student_ce", "student_ppl"}
    torch.testing.assert_close(curves["student_ce"], sums["ce"][kept] / sums["tokens"][kept], rtol=1e-5, atol=1e-6)
    weighted = (curves["tokens"] * curves["student_ce"]).sum() / curves["tokens"].sum()
    assert weighted.exp() == pytest.approx(results["test/ppl"], rel=1e-5)


def test_states_add_up_across_ranks():  # DDP reduces each state with its dist_reduce_fx; merge_state does the same
    torch.manual_seed(1)
    ce, kl, agree = torch.rand(6, LENGTH), torch.rand(6, LENGTH), torch.rand(6, LENGTH) > 0.5
    counted = torch.rand(6, LENGTH) > 0.3
    whole, first, second = (PositionCurves(LENGTH, teacher=True) for _ in range(3))
    whole.update(counted, ce, kl, agree)
    first.update(counted[:2], ce[:2], kl[:2], agree[:2])
    second.update(counted[2:], ce[2:], kl[2:], agree[2:])
    first.merge_state(second)
    for name, value in whole.compute().items():
        torch.testing.assert_close(first.compute()[name], value)


def test_a_longer_batch_grows_the_curves():
    curves = PositionCurves(4)
    curves.update(torch.ones(1, 6, dtype=torch.bool), torch.arange(6.0)[None])
    assert torch.equal(curves.compute()["student_ce"], torch.arange(6, dtype=torch.float64))


class Recorder:
    def __init__(self) -> None:
        self.logged: list[dict] = []
        self.config = self

    def log(self, data: dict, *args, **kwargs) -> None:
        self.logged.append(data)

    def update(self, *args, **kwargs) -> None:
        pass


class RecordingWandbLogger(WandbLogger):
    """A W&B logger that records what it would send (no wandb run)."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self.recorder = Recorder()

    @property
    def experiment(self) -> Recorder:
        return self.recorder


def test_curves_are_a_wandb_table_per_split():
    pytest.importorskip("wandb")
    logger = RecordingWandbLogger()
    lm = distiller()
    tiny_trainer(logger=logger).validate(lm, datamodule=TinyLMData(n=8), verbose=False)
    tables = [entry for entry in logger.recorder.logged if "val/per_position" in entry]
    assert len(tables) == 1
    table = tables[0]["val/per_position"]
    assert list(table.columns) == list(TABLE_COLUMNS)
    curves = lm.per_position["val"]
    assert [row[0] for row in table.data] == curves["position"].tolist()
    assert [row[5] for row in table.data] == pytest.approx(curves["agreement"].tolist())


def test_an_epoch_that_counts_no_position_is_one_line():
    data = TinyLMData(n=8)
    ids = synthetic_ids(8, seed=1)
    data.splits["val"] = LMSplit(ids)
    data.splits["val"].labels = torch.full_like(ids, -100)
    for lm in (distiller(), LMModule(CausalMean())):
        with pytest.raises(ValueError, match="no val batch counted a single position") as error:
            tiny_trainer().validate(lm, datamodule=data, verbose=False)
        assert "\n" not in str(error.value)


def test_padding_only_rows_leave_the_curves_unchanged():
    lm = distiller()
    data = TinyLMData(n=8)
    tiny_trainer().test(lm, datamodule=data, verbose=False)
    plain = lm.per_position["test"]
    ids = torch.cat([data.splits["test"].ids, torch.full((3, LENGTH), PAD)])
    data.splits["test"] = LMSplit(ids)
    tiny_trainer().test(lm, datamodule=data, verbose=False)
    for name, value in plain.items():
        torch.testing.assert_close(lm.per_position["test"][name], value)
