"""Unstructured magnitude pruning of the student on a sparsity schedule over the fit.

:class:`StudentPruning` is Lightning's :class:`~lightning.pytorch.callbacks.ModelPruning` (PyTorch's
``torch.nn.utils.prune`` masks) restricted to the student: the teacher is never touched. The
sparsity is 0 before ``start_epoch``, takes its first step there and reaches ``amount`` at ``end_epoch`` (cubic: Zhu & Gupta 2017,
or linear). Checkpoints always hold the folded dense weights (zeros where pruned); the in-memory
masks are made permanent at the end of the fit unless ``make_pruning_permanent=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelPruning
from torch import Tensor, nn

from kdlight.objectives.preservation import capture_references

SCHEDULES = ("cubic", "linear", "one_shot")


class CompressionStage:
    """A compression callback that knows when its model has reached its final form."""

    def reached_target(self, epoch: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


def compressed_network(pl_module: LightningModule) -> nn.Module:
    """The network a compression callback works on: ``student`` of a DistillationModule, else ``model``."""
    for name in ("student", "model"):
        network = getattr(pl_module, name, None)
        if isinstance(network, nn.Module):
            return network
    raise ValueError(
        f"{type(pl_module).__name__} has neither a `student` nor a `model` network to compress; "
        "use kdlight.DistillationModule or kdlight.ClassifierModule"
    )


def capture_dense_references(pl_module: LightningModule, network: nn.Module, refresh: bool = True) -> None:
    """While ``network`` is still uncompressed (each epoch start until, and right before, it is
    compressed): give explanation-preservation terms a frozen copy of it as their dense reference,
    replacing an older copy (``refresh``), so the reference is the student compression starts from."""
    objective = getattr(pl_module, "objective", None)
    if isinstance(objective, nn.Module):
        capture_references(objective, network, refresh=refresh)


def check_fraction(owner: str, name: str, value: float) -> float:
    """``value`` in [0, 1), else one line naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be a fraction in [0, 1) (0.9 removes 90 %), got {value!r}")
    return float(value)


def scheduled_sparsity(epoch: int, amount: float, start_epoch: int, end_epoch: int, schedule: str) -> float:
    """Sparsity to reach at the start of ``epoch``: 0 before ``start_epoch``, ``amount`` from
    ``end_epoch`` on; in between ``amount * (1 - (1 - p)**3)`` (cubic) or ``amount * p`` (linear)
    with ``p = (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1)``."""
    if epoch < start_epoch:
        return 0.0
    if schedule == "one_shot" or epoch >= end_epoch:
        return amount
    progress = (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1)
    return amount * (1.0 - (1.0 - progress) ** 3) if schedule == "cubic" else amount * progress


def prunable_weights(network: nn.Module, parameter_names: list[str]) -> list[tuple[nn.Module, str]]:
    """``(module, name)`` of every weight matrix / kernel (2-D or more) named in ``parameter_names``
    (normalisation scales and biases are left alone unless ``bias`` is named)."""
    found = []
    for module in network.modules():
        for name in parameter_names:
            tensor = getattr(module, f"{name}_orig", getattr(module, name, None))
            if (
                isinstance(tensor, nn.Parameter)
                and (tensor.dim() >= 2 or name == "bias")
                and not list(module.children())
            ):
                found.append((module, name))
    return found


def sparsity_counts(network: nn.Module) -> tuple[int, int]:
    """Non-zero and total parameter counts of ``network`` (pruned entries count as zero)."""
    nonzero = total = 0
    for tensor in _effective_tensors(network):
        nonzero += int((tensor != 0).sum())
        total += tensor.numel()
    return nonzero, total


def _effective_tensors(network: nn.Module) -> Iterator[Tensor]:
    for module in network.modules():
        for name, param in module.named_parameters(recurse=False):
            yield getattr(module, name.removesuffix("_orig")) if name.endswith("_orig") else param


def fold_masks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every ``X_orig`` / ``X_mask`` pair replaced by the dense ``X = X_orig * X_mask``
    (pruned entries stored as zeros), in place; returns it."""
    for key in [k for k in state if k.endswith("_mask") and k.removesuffix("_mask") + "_orig" in state]:
        base = key.removesuffix("_mask")
        orig, mask = state.pop(base + "_orig"), state.pop(key)
        state[base] = (mask.to(orig.dtype) * orig).to(orig.device)
    return state


def _detach_masked(name: str):
    def hook(module: nn.Module, _inputs: object, _output: object) -> None:
        tensor = module.__dict__.get(name)
        if isinstance(tensor, Tensor) and not isinstance(tensor, nn.Parameter) and tensor.grad_fn is not None:
            module.__dict__[name] = tensor.detach()

    return hook


class StudentPruning(ModelPruning, CompressionStage):
    """L1 magnitude pruning of the student's weights, ramped to ``amount`` over the fit.

    At the start of every epoch the pruned weights are brought to the scheduled sparsity
    (:func:`scheduled_sparsity`); pruned weights stay zero while training (PyTorch masks). With
    ``global_pruning`` (default) the smallest weights of the whole student go first, else each
    layer loses the same fraction. ``end_epoch`` defaults to the middle of the fit, so the second
    half fine-tunes at the final sparsity. Logs ``compress/sparsity`` (zero fraction of the pruned
    weights), ``compress/nonzero_params`` and ``compress/total_params`` (whole student) each epoch.
    """

    def __init__(
        self,
        amount: float = 0.9,
        schedule: str = "cubic",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        parameter_names: list[str] | None = None,
        global_pruning: bool = True,
        make_pruning_permanent: bool = True,
    ) -> None:
        self.target = check_fraction("StudentPruning", "amount", amount)
        if schedule not in SCHEDULES:
            raise ValueError(
                f"StudentPruning: unknown schedule {schedule!r}; valid schedules are: {', '.join(SCHEDULES)}"
            )
        if start_epoch < 0 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(
                f"StudentPruning: need 0 <= start_epoch <= end_epoch, got start_epoch={start_epoch}, end_epoch={end_epoch}"
            )
        names = list(parameter_names or ["weight"])
        bad = [n for n in names if n not in ModelPruning.PARAMETER_NAMES]
        if bad:
            raise ValueError(f"StudentPruning: parameter_names {bad} are not prunable; valid names are: weight, bias")
        super().__init__(
            pruning_fn="l1_unstructured",
            parameter_names=names,
            use_global_unstructured=global_pruning,
            amount=self.target,
            make_pruning_permanent=make_pruning_permanent,
            use_lottery_ticket_hypothesis=False,
        )
        self.schedule, self.start_epoch, self.end_epoch = schedule, start_epoch, end_epoch
        self.global_pruning = global_pruning
        self._detach_hooks: dict[int, object] = {}
        self._load_hooked: set[int] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Prune only the student (or a ClassifierModule's model), never the teacher."""
        network = compressed_network(pl_module)
        self._parameters_to_prune = prunable_weights(network, list(self._parameter_names))
        if not self._parameters_to_prune:
            raise ValueError(
                f"StudentPruning: {type(network).__name__} has no {list(self._parameter_names)} weight matrices or "
                "kernels to prune"
            )
        self._network = network
        if id(network) not in self._load_hooked:
            network.register_load_state_dict_pre_hook(self._match_masks)
            self._load_hooked.add(id(network))
        if self.end_epoch is None:
            self.end_epoch = max(self.start_epoch, math.ceil((trainer.max_epochs or 2) / 2) - 1)

    def reached_target(self, epoch: int) -> bool:
        if self.schedule == "one_shot" or self.end_epoch is None:
            return epoch >= self.start_epoch
        return epoch >= self.end_epoch

    def _match_masks(self, network: nn.Module, state: dict[str, Tensor], prefix: str, *_: object) -> None:
        """Load-state-dict pre-hook of the pruned network: checkpoints store folded dense weights
        (:meth:`on_save_checkpoint`); loading one into a network that still carries its masks (a
        test after a fit with ``make_pruning_permanent=False``) masks the stored zeros again, and
        masked weights (an older checkpoint) load into a plain network as their dense product."""
        for path, module in network.named_modules():
            key = f"{prefix}{path}." if path else prefix
            for name in self._parameter_names:
                base = key + name
                if hasattr(module, f"{name}_mask") and base in state and base + "_orig" not in state:
                    dense = state.pop(base)
                    state[base + "_orig"], state[base + "_mask"] = dense, (dense != 0).to(dense.dtype)
                elif isinstance(getattr(module, name, None), nn.Parameter) and base + "_mask" in state:
                    orig, mask = state.pop(base + "_orig"), state.pop(base + "_mask")
                    state[base] = mask.to(orig.dtype) * orig

    def sparsity(self) -> float:
        """Zero fraction of the pruned weights now."""
        zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in self._parameters_to_prune)
        return zeros / sum(getattr(m, n).numel() for m, n in self._parameters_to_prune)

    def prune_to(self, fraction: float) -> None:
        """Mask the smallest weights until ``fraction`` of the pruned weights are zero (exactly
        ``round(fraction * count)``, globally or per layer). Unmasked zeros (a resumed fit's
        folded masks) are the smallest, so they are masked first."""

        def masked(module: nn.Module, name: str) -> int:
            mask = getattr(module, f"{name}_mask", None)
            return 0 if mask is None else int((mask == 0).sum())

        self._keep_copyable()
        if self._use_global_unstructured:
            total = sum(getattr(m, n).numel() for m, n in self._parameters_to_prune)
            missing = round(fraction * total) - sum(masked(m, n) for m, n in self._parameters_to_prune)
            if missing > 0:
                self.apply_pruning(missing)
            return
        for module, name in self._parameters_to_prune:
            missing = round(fraction * getattr(module, name).numel()) - masked(module, name)
            if missing > 0:
                self.pruning_fn(module, name=name, amount=missing)

    def _keep_copyable(self) -> None:
        """After each forward, store the masked weight detached: PyTorch recomputes it before the
        next forward anyway, and a non-leaf tensor attribute would make the student impossible to
        deep-copy (the explanation callback copies it for its chance level)."""
        for module, name in self._parameters_to_prune:
            if id(module) not in self._detach_hooks:
                self._detach_hooks[id(module)] = module.register_forward_hook(_detach_masked(name))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        dense = not any(hasattr(m, f"{n}_mask") for m, n in self._parameters_to_prune)
        capture_dense_references(pl_module, self._network, refresh=dense)
        self.prune_to(scheduled_sparsity(epoch, self.target, self.start_epoch, self.end_epoch, self.schedule))
        nonzero, total = sparsity_counts(self._network)
        pl_module.log("compress/sparsity", self.sparsity(), on_epoch=True, on_step=False)
        pl_module.log("compress/nonzero_params", float(nonzero), on_epoch=True, on_step=False)
        pl_module.log("compress/total_params", float(total), on_epoch=True, on_step=False)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        """Every checkpoint stores the folded dense weights (``weight``, pruned entries zero), whatever
        ``make_pruning_permanent`` says, so it loads into the config's dense architecture (resume,
        ``kdlight test``, the next teacher); a resumed fit masks those zeros again at its first epoch."""
        fold_masks(checkpoint["state_dict"])

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Pruning happens at the start of each epoch (so every validation sees the epoch's sparsity)."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """As :meth:`on_train_epoch_end`."""
