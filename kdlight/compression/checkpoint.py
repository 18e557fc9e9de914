"""Checkpoints around compression: best-of-the-compressed-epochs, and starting from dense weights."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kdlight.compression.pruning import CompressionStage, compressed_network
from kdlight.core.weights import load_weights


class CompressedCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that skips epochs before every
    compression callback (:class:`StudentPruning`, :class:`StructuredPruning`) reached its final
    sparsity / shape, so ``best.ckpt`` by ``val/acc`` is never a dense early epoch."""

    def compressed(self, trainer: Trainer) -> bool:
        stages = [cb for cb in trainer.callbacks if isinstance(cb, CompressionStage)]
        return all(stage.reached_target(trainer.current_epoch) for stage in stages)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.compressed(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.compressed(trainer):
            super().on_validation_end(trainer, pl_module)


class StudentInit(Callback):
    """Start the fit from trained (dense) student weights: ``checkpoint`` (a DistillationModule /
    ClassifierModule checkpoint or a state_dict file) is loaded into the student before training.
    List it before the pruning callbacks. A resumed fit (``--ckpt_path``) keeps the checkpoint's weights."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.checkpoint = checkpoint

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not trainer.ckpt_path:
            load_weights(compressed_network(pl_module), self.checkpoint, role="student")
