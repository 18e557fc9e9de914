"""Structured channel pruning that physically removes the student's channels / neurons (Torch-Pruning).

:class:`StructuredPruning` removes ``ratio`` of the output channels of every prunable conv / linear
layer of the student (the layer producing the logits excepted) by L1 magnitude, with Torch-Pruning's
dependency graph keeping coupled layers (BatchNorm, the next layer's inputs) consistent. The new
shapes are stored in checkpoints (``kdlight_pruned``, see :mod:`kdlight.core.pruned`) so a
checkpoint rebuilds the pruned student when it is tested, resumed or used as a teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from kdlight.compression.pruning import (
    CompressionStage,
    capture_dense_references,
    check_fraction,
    compressed_network,
)
from kdlight.core.pruned import (
    PRUNED_KEY,
    Record,
    checkpoint_record,
    rebuild_for_checkpoint,
    structure_of,
    structure_record,
)

#: layer types Torch-Pruning can remove output channels from (the roots of its pruning groups)
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def output_layers(model: nn.Module, example: Tensor) -> set[str]:
    """Paths of the leaf modules whose output is the model's output (their channels are the classes)."""
    outputs: dict[str, Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, module in model.named_modules()
        if not list(module.children())
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {name for name, out in outputs.items() if isinstance(out, Tensor) and out.data_ptr() == logits.data_ptr()}


def prunable_layers(model: nn.Module, example: Tensor, layers: list[str] | None = None) -> list[str]:
    """The layers to prune: ``layers`` checked (one line per layer that cannot be pruned), or by
    default every conv / linear layer but the output layer."""
    modules = dict(model.named_modules())
    final = output_layers(model, example)
    if layers is None:
        return [name for name, m in modules.items() if isinstance(m, PRUNABLE_TYPES) and name not in final]
    for name in layers:
        if name not in modules:
            valid = [n for n, m in modules.items() if isinstance(m, PRUNABLE_TYPES) and n not in final]
            raise ValueError(
                f"StructuredPruning: {type(model).__name__} has no layer {name!r}; prunable layers are: {', '.join(valid)}"
            )
        if name in final:
            raise ValueError(
                f"StructuredPruning: layer {name!r} produces the model's logits (one channel per class), so its "
                "channels cannot be removed; drop it from layers"
            )
        if not isinstance(modules[name], PRUNABLE_TYPES):
            raise ValueError(
                f"StructuredPruning: layer {name!r} is a {type(modules[name]).__name__}, which the dependency graph "
                "cannot prune on its own; name the Conv1d/Conv2d/Conv3d/Linear layer that feeds it"
            )
    return list(layers)


def prune_channels(
    model: nn.Module, example: Tensor, ratio: float, layers: list[str] | None = None, global_pruning: bool = False
) -> Record:
    """Remove ``ratio`` of the output channels of ``layers`` (default: all but the output layer) by
    group L1 magnitude, in place; return the shape record (:func:`structure_record`)."""
    import torch_pruning as tp

    check_fraction("StructuredPruning", "ratio", ratio)
    chosen = set(prunable_layers(model, example, layers))
    modules = dict(model.named_modules())
    ignored = [m for name, m in modules.items() if isinstance(m, PRUNABLE_TYPES) and name not in chosen]
    ignored += [modules[name] for name in output_layers(model, example) if modules[name] not in ignored]
    dense = structure_of(model)
    was_training = model.training
    model.eval()  # tracing runs a forward: keep BatchNorm statistics as they are
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            example_inputs=example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            global_pruning=global_pruning,
        )
        pruner.step()
    finally:
        model.train(was_training)
    return structure_record(dense, model)


class StructuredPruning(Callback, CompressionStage):
    """Physically remove ``ratio`` of the student's channels at the start of epoch ``at_epoch``
    (0: before training starts), then keep training the smaller student.

    ``layers``: module paths to prune (default: every Conv/Linear layer except the one producing
    the logits). ``global_pruning``: rank channels across layers instead of per layer. A later
    epoch rebuilds the optimizer for the smaller parameters (its moments restart). Checkpoints
    carry the pruned shapes (``kdlight_pruned``); with ``--ckpt_path`` of such a checkpoint the
    student is rebuilt to those shapes before the weights load. Logs ``compress/total_params``.
    """

    def __init__(
        self, ratio: float = 0.5, at_epoch: int = 0, layers: list[str] | None = None, global_pruning: bool = False
    ) -> None:
        super().__init__()
        self.ratio = check_fraction("StructuredPruning", "ratio", ratio)
        if at_epoch < 0:
            raise ValueError(f"StructuredPruning: at_epoch must be >= 0, got {at_epoch}")
        self.at_epoch, self.layers, self.global_pruning = at_epoch, layers, global_pruning
        self.record: Record | None = None
        self._trainer: Trainer | None = None
        self._prefix, self._hooked = "student", False

    def reached_target(self, epoch: int) -> bool:
        return epoch >= self.at_epoch

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        network = compressed_network(pl_module)
        if not self._hooked:  # a checkpoint's pruned student is rebuilt right before its weights load
            network.register_load_state_dict_pre_hook(self._rebuild_before_load)
            self._trainer, self._prefix, self._hooked = trainer, _prefix(pl_module), True
        if stage == "fit" and self.at_epoch == 0 and self.record is None:
            self.prune(pl_module)

    def _rebuild_before_load(self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: Any) -> None:
        """Load-state-dict pre-hook of the student: when the incoming tensors have other shapes,
        rebuild the student from the ``kdlight_pruned`` record of the checkpoint being restored."""
        own = module.state_dict()
        if all(state_dict[prefix + k].shape == v.shape for k, v in own.items() if prefix + k in state_dict):
            return
        path = self._trainer.ckpt_path if self._trainer is not None else None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True) if path and Path(path).is_file() else {}
        incoming = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        rebuild_for_checkpoint(module, checkpoint, incoming, source=f"checkpoint {path}")
        self.record = checkpoint_record(checkpoint, self._prefix)

    def prune(self, pl_module: LightningModule) -> None:
        network = compressed_network(pl_module)
        example = pl_module.example_input()
        capture_dense_references(pl_module, network)
        self.record = prune_channels(network, example, self.ratio, self.layers, self.global_pruning)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch < self.at_epoch and self.record is None:
            capture_dense_references(pl_module, compressed_network(pl_module))  # the student it will prune
        if trainer.current_epoch == self.at_epoch and self.record is None:
            self.prune(pl_module)
            trainer.strategy.setup_optimizers(trainer)
        total = sum(p.numel() for p in compressed_network(pl_module).parameters())
        pl_module.log("compress/total_params", float(total), on_epoch=True, on_step=False)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.record is not None:
            checkpoint.setdefault(PRUNED_KEY, {})[_prefix(pl_module)] = self.record


def _prefix(pl_module: LightningModule) -> str:
    return "student" if isinstance(getattr(pl_module, "student", None), nn.Module) else "model"
