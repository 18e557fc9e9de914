"""scripts/bench section 1's Lightning-ceiling variants and the switch to Lightning's own log path."""

from __future__ import annotations

import sys

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.trainer.connectors.logger_connector import result as lightning_result

from kdlight.training.fast_log import skip_redundant_result_moves

from conftest import REPO, tiny_trainer

sys.path.insert(0, str(REPO / "scripts"))
from bench import throughput  # noqa: E402
from bench.common import lightning_log_path  # noqa: E402
from bench.workloads import Workload  # noqa: E402


def trained_student(module_cls) -> torch.Tensor:
    seed_everything(0, verbose=False)
    wl = Workload(name="digits", batch_size=64, epochs=1, repeats=1)
    module = module_cls(*wl.models())
    tiny_trainer(limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0).fit(
        module, datamodule=wl.datamodule()
    )
    return torch.cat([p.detach().flatten() for p in module.student.parameters()])


def test_manual_and_raw_optimizer_variants_train_like_the_automatic_module():
    automatic = trained_student(throughput.bare_module_cls())
    manual = trained_student(throughput.manual_module_cls(raw=False))
    raw = trained_student(throughput.manual_module_cls(raw=True))
    seed_everything(0, verbose=False)
    untrained = torch.cat(
        [p.flatten() for p in Workload(name="digits", batch_size=64, epochs=1, repeats=1).models()[1].parameters()]
    )
    assert not torch.equal(automatic, untrained)
    assert torch.equal(manual, automatic) and torch.equal(raw, automatic)


def test_lightning_log_path_switches_off_the_fast_path_inside_only(monkeypatch):
    skip_redundant_result_moves()
    moved = []
    lightning_move = lightning_result.apply_to_collection
    monkeypatch.setattr(
        lightning_result, "apply_to_collection", lambda *a, **k: moved.append(1) or lightning_move(*a, **k)
    )
    results = lightning_result._ResultCollection(training=True)
    results.log("training_step", "x", torch.tensor(1.0), on_step=False, on_epoch=True, batch_size=2)
    metric = results["training_step.x"]
    with lightning_log_path():
        metric.to(torch.device("cpu"))
    assert len(moved) == 1  # Lightning's own move ran inside
    metric.to(torch.device("cpu"))
    assert len(moved) == 1  # and is skipped again outside
