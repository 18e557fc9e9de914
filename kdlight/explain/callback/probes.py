"""The probe set: a fixed sample of the validation (or test) set, and how ranks share it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch import Trainer
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from kdlight.core.batch import Batch, as_batch, collate
from kdlight.core.modality import Modality
from kdlight.training.teacher_cache import data_fingerprint


@dataclass(frozen=True)
class Probes:
    """This rank's share of the probe set in one run, and what the models make of it."""

    inputs: Tensor
    labels: Tensor
    teacher_logits: Tensor
    student_logits: Tensor
    target: Tensor  #: the class explained (the teacher's or student's prediction, or the label)
    train_inputs: Tensor | None  #: the training inputs, where a method's baselines need them
    key: str  #: fingerprint of the inputs and the target (part of every teacher-side key)
    modality: Modality  #: how the inputs are grouped, perturbed and drawn (the data module's)
    indices: Tensor  #: each probe's row in its split's dataset
    masks: Tensor | None  #: ground-truth relevant features of each probe (``None``: unknown)
    #: ``[n, T]`` True at real tokens (text inputs; ``None`` for inputs without padding): what maps are scored on
    valid: Tensor | None = None


class ProbeSet:
    """``num_probes`` sample indices drawn once with ``seed``, then fixed for every run.

    Each rank explains its share ``probes[rank::world_size]``; metrics are synced across ranks.
    """

    def __init__(self, num_probes: int, seed: int) -> None:
        self.num_probes, self.seed = num_probes, seed
        self._indices: Tensor | None = None

    def indices(self, dataset_size: int) -> Tensor:
        """The probe indices (sorted): drawn at the first call, then the same."""
        if self.num_probes > dataset_size:
            raise ValueError(
                f"num_probes={self.num_probes} is larger than the validation set ({dataset_size} samples); "
                f"set num_probes <= {dataset_size}"
            )
        if self._indices is None:
            generator = torch.Generator().manual_seed(self.seed)
            self._indices = torch.randperm(dataset_size, generator=generator)[: self.num_probes].sort().values
        return self._indices

    def batch(self, trainer: Trainer, split: str) -> Batch:
        """This rank's share of the probes of ``split``: inputs ``[n, ...]``, labels ``[n]``, the
        samples' ``attention_mask`` if they carry one and, as ``index``, each probe's row in the
        split's dataset. Samples may be tuples or dicts."""
        dataset = split_dataset(trainer, split)
        indices = self.indices(len(dataset))[trainer.global_rank :: trainer.world_size]
        batch = as_batch(collate([dataset[int(i)] for i in indices]))
        if batch.target is None:
            raise ValueError(
                f"the {split} samples have no target; ExplanationAgreement needs labelled {split} data "
                "(samples (inputs, target) or dicts with 'target')"
            )
        batch.target, batch.index = batch.target.long(), indices
        return batch


def split_dataset(trainer: Trainer, split: str):
    """The dataset of the split's (first) loader; ``None`` when there is none."""
    loaders = trainer.val_dataloaders if split == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return getattr(loaders, "dataset", None)


def probe_key(x: Tensor, target: Tensor) -> str:
    """Fingerprint of the probe inputs and their targets."""
    return f"{data_fingerprint(x)}|{data_fingerprint(target)}"


def global_sum(trainer: Trainer, values: Tensor) -> float:
    """Sum of ``values`` over every rank."""
    return float(trainer.strategy.reduce(values.float().sum(), reduce_op="sum"))


def global_mean(trainer: Trainer, values: Tensor) -> float:
    """Mean of the finite ``values`` of every rank (not a mean of per-rank means); NaN if none."""
    values = values.float()
    finite = torch.isfinite(values)
    total = trainer.strategy.reduce(torch.where(finite, values, torch.zeros_like(values)).sum(), reduce_op="sum")
    count = trainer.strategy.reduce(finite.sum().float(), reduce_op="sum")
    return float(total / count) if float(count) > 0 else float("nan")


def gather_in_probe_order(trainer: Trainer, t: Tensor) -> Tensor:
    """Every rank's share ``probes[rank::world]`` put back in probe order (shares may differ by one)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return t
    parts = gather_all_tensors(t.contiguous())
    out = t.new_empty((sum(len(part) for part in parts), *t.shape[1:]))
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


def explained_epoch(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether this validation run is explained: not the sanity check; in ``fit`` every
    ``every_n_epochs``-th epoch and the last one; always in ``validate``."""
    if trainer.sanity_checking:
        return False
    last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
    return trainer.state.fn != "fit" or (trainer.current_epoch + 1) % every_n_epochs == 0 or last_epoch
