"""Plain supervised training of any ``nn.Module``: teachers and scratch baselines."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kdlight.core.batch import as_batch
from kdlight.objectives.base import check_arg
from kdlight.training.base import SupervisedBase, classification_metrics, dry_forward


class ClassifierModule(SupervisedBase):
    """Train ``model`` with cross-entropy; logs accuracy and macro-F1 for train/val/test.

    The network is stored as ``self.model``, so its checkpoint can be handed to
    ``DistillationModule(teacher_checkpoint=...)``. Its checkpoints record the data module's split
    (``kdlight_data``), so a student is refused val/test samples this network was trained on.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, num_classes)
        self.save_init_args(objects=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.label_smoothing = check_arg(
            "ClassifierModule",
            "label_smoothing",
            label_smoothing,
            "fraction",
            "0 turns label smoothing off, 0.1 is usual",
        )

    def setup(self, stage: str) -> None:
        x = self.example_input()
        self.check_text(x, model=self.model)
        num_classes = self.resolve_num_classes(dry_forward(self.model, x))
        for split in ("val", "test"):
            setattr(self, f"{split}_metrics", classification_metrics(num_classes, f"{split}/"))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        batch = as_batch(batch)
        self.check_attention_mask(batch)
        logits = self.model(batch.inputs)
        loss = F.cross_entropy(logits, batch.target, label_smoothing=self.label_smoothing)
        self.record_training({"train/loss": loss}, logits, batch.target)
        return loss

    def _evaluate(self, batch, split: str, batch_idx: int = 0) -> None:
        batch = as_batch(batch)
        x, y = batch.inputs, batch.target
        logits = self.model(x)
        self.log(f"{split}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=len(x))
        getattr(self, f"{split}_metrics").update(logits, y)
        self.log_dict(getattr(self, f"{split}_metrics"), on_epoch=True, prog_bar=split == "val")
