"""kdlight.training.fast_log: self.log skips Lightning's device move only when nothing would move."""

from __future__ import annotations

import csv
from dataclasses import InitVar, dataclass, field
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.connectors.logger_connector import result as lightning_result
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.wrappers import MinMaxMetric

from kdlight import DistillationModule
from kdlight.models import MLP, CNN2d
from kdlight.objectives import KD
from kdlight.training.fast_log import on_device, skip_redundant_result_moves

from conftest import tiny_trainer

CPU, META = torch.device("cpu"), torch.device("meta")


def logged_metric(value: torch.Tensor):
    """A Lightning ``_ResultMetric`` holding ``value`` (through Lightning's own ``log``)."""
    results = lightning_result._ResultCollection(training=True)
    results.log("training_step", "x", value, on_step=False, on_epoch=True, batch_size=2)
    return results["training_step.x"]


def test_install_is_idempotent_and_wraps_lightnings_method():
    assert skip_redundant_result_moves() and skip_redundant_result_moves()
    wrapper = lightning_result._ResultMetric.to
    lightning_to = wrapper.__wrapped__
    assert not hasattr(lightning_to, "__wrapped__")  # wrapped once, not twice
    assert lightning_to.__qualname__ == "_ResultMetric.to"


def test_environment_switch_sends_calls_to_lightning(monkeypatch):
    skip_redundant_result_moves()
    metric = logged_metric(torch.tensor(1.5))
    meta = metric.meta
    monkeypatch.setenv("KDLIGHT_FAST_LOG", "0")
    assert metric.to(CPU) is metric and metric.meta is not meta  # Lightning's copy ran
    lightning_to = lightning_result._ResultMetric.to.__wrapped__
    monkeypatch.setattr(lightning_result._ResultMetric, "to", lightning_to)
    assert skip_redundant_result_moves() is False  # not installed while switched off
    assert lightning_result._ResultMetric.to is lightning_to


def test_nothing_to_move_skips_lightnings_copy(monkeypatch):
    skip_redundant_result_moves()
    metric = logged_metric(torch.tensor(1.5))
    meta = metric.meta

    def refuse(*args, **kwargs):
        raise AssertionError("Lightning's move ran although every tensor is on the device")

    monkeypatch.setattr(lightning_result, "apply_to_collection", refuse)
    assert metric.to(CPU) is metric
    assert metric.meta is meta and metric.value.device == CPU


def test_tensors_elsewhere_still_move():
    skip_redundant_result_moves()
    metric = logged_metric(torch.tensor(1.5))
    metric.to(META)  # the cpu states must go to the meta device: Lightning's own move runs
    assert metric.value.device == META and metric.cumulated_batch_size.device == META
    assert metric._defaults["value"].device == META


def test_on_device_looks_inside_containers_dataclasses_and_metrics():
    @dataclass
    class Holder:
        name: str
        tensors: list

    assert on_device({"a": [torch.zeros(2), (torch.ones(1), "text")], "b": 3}, CPU)
    assert not on_device({"a": [torch.zeros(2), (torch.ones(1, device=META),)]}, CPU)
    assert on_device(Holder("h", [torch.zeros(1)]), CPU)
    assert not on_device(Holder("h", [torch.zeros(1, device=META)]), CPU)
    accuracy = MulticlassAccuracy(num_classes=3)
    assert on_device(accuracy, CPU) and not on_device(accuracy, META)
    assert not on_device(accuracy.to(META), CPU)


@pytest.mark.parametrize("leftover", ["computed", "default", "buffer", "child"])
def test_a_metric_with_any_part_elsewhere_is_moved_by_lightning(leftover):
    """Everything torchmetrics' ``Metric._apply`` moves counts: a part left on the CPU sends the
    call to Lightning, which moves it (found in review: checking the states alone missed these)."""
    skip_redundant_result_moves()
    accuracy = MulticlassAccuracy(num_classes=3)
    metric = MinMaxMetric(accuracy) if leftover == "child" else accuracy
    metric.update(torch.tensor([[0.9, 0.05, 0.05]]), torch.tensor([0]))
    metric.to(META)
    if leftover == "computed":
        metric._computed = torch.tensor(0.5)
    elif leftover == "default":
        metric._defaults["tp"] = torch.zeros(3)
    elif leftover == "buffer":
        metric.register_buffer("scale", torch.ones(3))
    else:
        accuracy.tp = torch.zeros(3, dtype=torch.long)  # the wrapped metric's state, on the CPU
    assert not on_device(metric, META)
    results = lightning_result._ResultCollection(training=True)
    results.log("validation_step", "acc", metric, on_step=False, on_epoch=True)
    assert results["validation_step.acc"].value is metric
    results["validation_step.acc"].to(META)
    assert on_device(metric, META)


def test_dataclass_walk_follows_init_fields_only():
    @dataclass
    class Node:
        weight: torch.Tensor
        scale: InitVar[float] = 1.0
        parent: Node | None = field(default=None, init=False)
        root: ClassVar[Node | None] = None

    node = Node(torch.zeros(1))
    node.parent = node  # a cycle through a non-init field
    Node.root = node  # and one through a class variable
    assert on_device(node, CPU) and not on_device(Node(torch.zeros(1, device=META)), CPU)


def fit_logged_metrics(tmp_path, digits, name: str) -> tuple[dict, list[dict]]:
    """``callback_metrics`` and the CSV rows of a short distillation fit with validation."""
    seed_everything(0, verbose=False)
    torch.manual_seed(0)
    module = DistillationModule(
        CNN2d(in_channels=1, num_classes=10, channels=[4, 8], hidden=16),
        MLP(in_features=64, num_classes=10, hidden=[16]),
        objective=KD(temperature=4.0, alpha=0.9),
        teacher_as_given=True,
    )
    trainer = tiny_trainer(
        max_epochs=2, limit_train_batches=6, limit_val_batches=2, log_every_n_steps=2, logger=CSVLogger(tmp_path, name)
    )
    trainer.fit(module, datamodule=digits)
    with open(trainer.logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    return {k: v.item() for k, v in trainer.callback_metrics.items()}, rows


def test_logged_values_equal_lightnings_own_path(tmp_path, digits, monkeypatch):
    skip_redundant_result_moves()
    fast = fit_logged_metrics(tmp_path, digits, "fast")
    monkeypatch.setattr(lightning_result._ResultMetric, "to", lightning_result._ResultMetric.to.__wrapped__)
    lightning = fit_logged_metrics(tmp_path, digits, "lightning")
    assert fast[0] == lightning[0] and len(fast[0]) >= 8
    assert fast[1] == lightning[1] and len(fast[1]) > 4
