"""Shared fixtures: offline logging, tiny trainers, a digits teacher checkpoint."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("KDLIGHT_CACHE_DIR", tempfile.mkdtemp(prefix="kdlight-test-cache-"))  # never ~/.cache
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny_trainer(**overrides) -> Trainer:
    """A quiet CPU trainer for tests."""
    settings = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    settings.update(overrides)
    return Trainer(**settings)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Run every test in its own directory with a fixed seed."""
    monkeypatch.chdir(tmp_path)
    seed_everything(0, verbose=False)
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and far faster on a busy machine
    yield
    torch.use_deterministic_algorithms(False)  # Trainer(deterministic=True) sets it process-wide


@pytest.fixture(scope="session")
def digits():
    from kdlight.data import DigitsDataModule

    return DigitsDataModule(batch_size=64, seed=0)


def digits_teacher():
    from kdlight.models import CNN2d

    return CNN2d(in_channels=1, num_classes=10, channels=[16, 32], hidden=64)


def digits_student():
    from kdlight.models import CNN2d

    return CNN2d(in_channels=1, num_classes=10, channels=[4, 8], hidden=16)


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory, digits) -> Path:
    """A ClassifierModule checkpoint of a digits teacher trained for 3 epochs."""
    from kdlight import ClassifierModule

    seed_everything(0, verbose=False)
    out = tmp_path_factory.mktemp("teacher")
    module = ClassifierModule(digits_teacher(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = tiny_trainer(max_epochs=3, default_root_dir=out)
    trainer.fit(module, datamodule=digits)
    path = out / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path
