"""Workloads of sections 1 and 5: models, data, kdlight modules and a timed ``fit``."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field

import torch

from bench.common import now, sync

DIGITS_TEACHER = dict(in_channels=1, num_classes=10, channels=[32, 64], hidden=128)
CIFAR_CLASSES = 100
CIFAR_STUDENT = dict(depth=8, widths=[16, 16, 32, 64])  # "resnet8": resnet20's widths, one block per stage
CIFAR_EVAL_SIZE = 128  # val/test samples of the synthetic data: 25 % of the 512 training samples (CIFAR: 20 %)


@functools.cache
def synthetic_cifar_cls():
    """An in-memory kdlight data module over random CIFAR-shaped tensors (made here, so it has
    everything kdlight's own data modules have: ``example_input``, ``train_inputs``, named
    batches with sample indices for the teacher cache, the shuffled ``EpochShuffleSampler`` loader)."""
    from kdlight.core.modality import Image
    from kdlight.data import ArrayDataModule

    class SyntheticCIFARDataModule(ArrayDataModule):
        """``train_size`` standard-normal 3x32x32 images (normalised-CIFAR scale), 100 classes."""

        def __init__(self, batch_size: int = 64, train_size: int = 512, seed: int = 0) -> None:
            super().__init__(batch_size=batch_size, seed=seed)
            self.train_size = train_size
            self.num_classes = CIFAR_CLASSES
            self.input_shape = (3, 32, 32)
            self.class_names = [str(c) for c in range(CIFAR_CLASSES)]
            self.modality = Image()

        def _load_splits(self):
            g = torch.Generator().manual_seed(self.seed)

            def make(n):
                return torch.randn(n, *self.input_shape, generator=g), torch.randint(
                    0, CIFAR_CLASSES, (n,), generator=g
                )

            return {"train": make(self.train_size), "val": make(CIFAR_EVAL_SIZE), "test": make(CIFAR_EVAL_SIZE)}

    return SyntheticCIFARDataModule


@dataclass
class Workload:
    """One model/data pair; every variant of sections 1 and 5 builds its models and loader here."""

    name: str  # "digits" or "cifar"
    batch_size: int
    epochs: int  # timed epochs per fit, after one warm-up epoch
    repeats: int
    variants: tuple[str, ...] = ()  # section-1 variants run for this workload
    student_hidden: list[int] = field(default_factory=lambda: [32])
    train_size: int = 512  # cifar only

    def models(self):
        """(teacher, student), random init from seed 0: the cost of a step does not depend on the weights."""
        torch.manual_seed(0)
        if self.name == "digits":
            from kdlight.models import MLP, CNN2d

            return CNN2d(**DIGITS_TEACHER), MLP(in_features=64, num_classes=10, hidden=list(self.student_hidden))
        from kdlight.models import CifarResNet, ResNet20

        return ResNet20(num_classes=CIFAR_CLASSES), CifarResNet(num_classes=CIFAR_CLASSES, **CIFAR_STUDENT)

    def datamodule(self):
        if self.name == "digits":
            from kdlight.data import DigitsDataModule

            dm = DigitsDataModule(batch_size=self.batch_size, seed=0)
        else:
            dm = synthetic_cifar_cls()(batch_size=self.batch_size, train_size=self.train_size, seed=0)
        dm.setup("fit")
        return dm

    def describe(self) -> str:
        if self.name == "digits":
            return (
                f"digits: DigitsDataModule (1167 train images 1x8x8, 10 classes), batch {self.batch_size}; teacher "
                f"CNN2d[32,64] hidden 128, student MLP(64, hidden={self.student_hidden})"
            )
        return (
            f"cifar: synthetic N(0,1) 3x32x32 tensors, {self.train_size} train samples, 100 classes (ArrayDataModule "
            f"subclass, same loader kind as digits), batch {self.batch_size}; teacher resnet20 (0.28M params), "
            "student resnet8 = CifarResNet(8, [16,16,32,64]) (0.08M)"
        )


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def kd_module(wl: Workload, cls=None, **kwargs):
    """``DistillationModule(teacher, student, KD(T=4, alpha=0.9), Adam(3e-3))`` of the workload."""
    from kdlight import DistillationModule
    from kdlight.objectives import KD

    cls = cls or DistillationModule
    teacher, student = wl.models()
    kwargs.setdefault("teacher_as_given", True)  # timing only: the teacher's weights do not matter
    return cls(teacher, student, objective=KD(temperature=4.0, alpha=0.9), optimizer=adam, **kwargs)


def classifier_module(wl: Workload):
    """The workload's student alone: ``ClassifierModule`` (CE), Adam(3e-3)."""
    from kdlight import ClassifierModule

    _, student = wl.models()
    return ClassifierModule(student, optimizer=adam)


def epoch_timer(device: str):
    import lightning as L

    class EpochTimer(L.Callback):
        """Time stamps at every train-epoch start and at the end of training."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def _stamp(self) -> None:
            sync(device)
            self.stamps.append(now())

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._stamp()

        def on_train_end(self, trainer, pl_module) -> None:
            self._stamp()

    return EpochTimer()


def samples_per_s(stamps: list[float], n_train: int) -> float:
    """Throughput over every epoch but the first (warm-up): stamps[1] .. stamps[-1]."""
    timed_epochs = len(stamps) - 2
    return n_train * timed_epochs / (stamps[-1] - stamps[1])


def seconds_per_epoch(stamps: list[float]) -> float:
    """Mean wall time of epochs 2..N (the first one warms up / fills the teacher cache)."""
    return (stamps[-1] - stamps[1]) / (len(stamps) - 2)


def reshuffle_validation(dm):
    """``dm`` with its validation batches in a new order every epoch: the same samples and batch
    size, but no validation batch matches one the teacher cache kept, so the teacher runs on
    every validation batch."""
    from torch.utils.data import DataLoader

    ordered = dm.val_dataloader

    def val_dataloader():
        loader = ordered()
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
        )

    dm.val_dataloader = val_dataloader
    return dm


def timed_fit(
    cfg,
    wl: Workload,
    module,
    epochs: int,
    logger=False,
    precision: str = "32-true",
    log_every_n_steps: int = 50,
    validate: bool = False,
    reshuffled_validation: bool = False,
) -> tuple[list[float], int]:
    """``trainer.fit`` with the section-1 Trainer settings (``validate``: a validation pass every
    epoch, inside the timed epochs; ``reshuffled_validation``: see :func:`reshuffle_validation`);
    returns the epoch time stamps and the number of training samples."""
    import lightning as L

    timer = epoch_timer(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        if logger == "csv":
            from lightning.pytorch.loggers import CSVLogger

            logger = CSVLogger(tmp, name="", version="")
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if cfg.device == "cuda" else "cpu",
            devices=1,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if validate else 0,
            precision=precision,
            log_every_n_steps=log_every_n_steps,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        dm = wl.datamodule()
        if reshuffled_validation:
            reshuffle_validation(dm)
        trainer.fit(module, datamodule=dm)
        n_train = len(dm.train_inputs())
    return timer.stamps, n_train


def lightning_fit(cfg, wl: Workload, module, epochs: int, **kwargs) -> float:
    """Training samples/s of a :func:`timed_fit`."""
    return samples_per_s(*timed_fit(cfg, wl, module, epochs, **kwargs))
