"""Distillation under DDP on CPU (gloo), launched as a script by tests/test_ddp.py.

Lightning's ``ddp`` strategy starts the other ranks by re-running this script with the same
arguments (``sys.argv``), so everything here runs on every rank and is driven by the command line
only. Two modes:

``--mode ddp``  fit a digits student for a few epochs with ``devices=2, strategy="ddp"`` and the
    ExplanationAgreement callback (with stability, and ground-truth masks that depend on the
    sample's index only, so localisation is logged), save the checkpoint, then ``trainer.validate``. Rank 0 writes
    ``result.json`` with the teacher's state-dict hash before/after fit on every rank (gathered),
    the student's hash on every rank, whether the teacher was in eval mode at every training step
    on every rank, how many probes each rank explained, and the validation metrics.
``--mode single``  ``devices=1``: load the student of that checkpoint and ``trainer.validate``
    the same data with the same callback: the reference the DDP numbers must equal.

Validation data: digits' validation split has 270 samples, an even number, so the
DistributedSampler that Lightning puts on the validation loader gives each rank 135 samples and
pads nothing. (It pads an uneven split by repeating samples, which would count them twice.)
Every validation metric is a sum over samples reduced across ranks (torchmetrics), so the DDP
values equal the single-process ones up to float summation order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's model factories

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402

from kdlight import DistillationModule  # noqa: E402
from kdlight.data import DigitsDataModule  # noqa: E402
from kdlight.explain.callback import ExplanationAgreement  # noqa: E402

from conftest import digits_student, digits_teacher  # noqa: E402

METHODS = ["integrated_gradients", "saliency"]


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


class TeacherModeProbe(Callback):
    """Records, before and after every training batch, whether any teacher submodule was in
    training mode, and the batch's loss."""

    def __init__(self) -> None:
        self.training_flags: list[bool] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.training_flags.append(any(m.training for m in pl_module.teacher.modules()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.training_flags.append(any(m.training for m in pl_module.teacher.modules()))
        self.losses.append(float(outputs["loss"]))


class CountingAgreement(ExplanationAgreement):
    """ExplanationAgreement that also records how many probes this rank explained."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shard_sizes: list[int] = []
        share = self.probe_set.batch

        def counted(trainer, split):
            batch = share(trainer, split)
            self.shard_sizes.append(len(batch))
            return batch

        self.probe_set.batch = counted


def index_masks(split: str, indices: torch.Tensor) -> torch.Tensor:
    """Ground-truth masks ``[N, 1, 8, 8]`` that depend on the sample's index only: one of the four
    centre pixels, and the whole top row for every third sample."""
    masks = torch.zeros((len(indices), 1, 8, 8), dtype=torch.bool)
    for row, index in enumerate(indices.tolist()):
        masks[row, 0, 3 + index % 2, 3 + (index // 2) % 2] = True
        masks[row, 0, 0] |= index % 3 == 0
    return masks


def gather(obj):
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def floats(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ddp", "single"), required=True)
    parser.add_argument("--teacher-checkpoint", required=True)
    parser.add_argument("--student-checkpoint", help="single mode: the checkpoint whose student is validated")
    parser.add_argument("--out", required=True, help="directory for result.json (and student.ckpt in ddp mode)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train-batches", type=int, default=10)
    parser.add_argument("--num-probes", type=int, default=31, help="odd on purpose: uneven shards 16 + 15")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(0, verbose=False)
    datamodule = DigitsDataModule(batch_size=32, seed=0)
    datamodule.ground_truth_masks = index_masks  # known relevant features: the callback logs localisation
    module = DistillationModule(
        digits_teacher(),
        digits_student(),
        teacher_checkpoint=args.teacher_checkpoint,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    callback = CountingAgreement(
        methods=METHODS,
        every_n_epochs=args.epochs,
        num_probes=args.num_probes,
        batch_size=16,
        log_images=False,
        method_args={"integrated_gradients": {"n_steps": 8}},
        stability={"noise_scale": 0.05, "n_samples": 2},
    )
    probe = TeacherModeProbe()
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    ddp = args.mode == "ddp"
    trainer = Trainer(
        accelerator="cpu",
        devices=2 if ddp else 1,
        strategy="ddp" if ddp else "auto",
        max_epochs=args.epochs,
        limit_train_batches=args.limit_train_batches,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=[callback, probe],
        **quiet,
    )
    result: dict = {"mode": args.mode, "val_size": datamodule.split_sizes()["val"]}

    if ddp:
        teacher_before = state_hash(module.teacher)
        student_before = state_hash(module.student)
        trainer.fit(module, datamodule=datamodule)
        result.update(
            world_size=trainer.world_size,
            fit_metrics=floats(trainer.callback_metrics),
            teacher_hash_before=gather(teacher_before),
            teacher_hash_after=gather(state_hash(module.teacher)),
            student_hash_before=gather(student_before),
            student_hash_after=gather(state_hash(module.student)),
            teacher_training_flags=gather(probe.training_flags),
            train_losses=gather(probe.losses),
            teacher_requires_grad=gather(any(p.requires_grad for p in module.teacher.parameters())),
            global_step=trainer.global_step,
        )
        checkpoint = out / "student.ckpt"
        trainer.save_checkpoint(checkpoint)  # rank 0 writes; every rank waits at a barrier
    else:
        state = torch.load(args.student_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)  # student and teacher exactly as the DDP run saved them
        result["world_size"] = trainer.world_size

    callback.shard_sizes.clear()
    validated = trainer.validate(module, datamodule=datamodule, verbose=False)
    result.update(
        val_metrics=floats(validated[0]),
        explain_results=floats(callback.last_results),
        probe_shard_sizes=gather(callback.shard_sizes),
        student_hash_validated=gather(state_hash(module.student)),
        teacher_hash_validated=gather(state_hash(module.teacher)),
    )
    if trainer.is_global_zero:
        (out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    if dist.is_available() and dist.is_initialized():
        # an undestroyed gloo group can abort the interpreter at exit ("terminate called without an
        # active exception", SIGABRT) after all the work is done
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
