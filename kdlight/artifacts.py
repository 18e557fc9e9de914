"""Send figures and tables to whichever logger a trainer has (W&B, TensorBoard, CSV files)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure


def artifact_dir(trainer: Trainer) -> Path:
    """``<log_dir>/explain`` of the first logger, else ``<default_root_dir>/explain``."""
    logger = trainer.loggers[0] if trainer.loggers else None
    base = getattr(logger, "log_dir", None) or trainer.default_root_dir
    path = Path(base) / "explain"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_name(key: str, step: int, suffix: str) -> str:
    return f"{key.replace('/', '_')}_epoch{step:03d}{suffix}"


def log_figure(trainer: Trainer, key: str, figure: Figure, epoch: int) -> list[str]:
    """Log ``figure`` under ``key`` to every logger; loggers without images get a PNG file.

    Returns the PNG paths written (empty when every logger took the image itself).
    """
    written: list[str] = []
    needs_file = not trainer.loggers
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Image(figure), "epoch": epoch})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=epoch, close=False)
        else:
            needs_file = True
    if needs_file:
        path = artifact_dir(trainer) / _file_name(key, epoch, ".png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        written.append(str(path))
    return written


def log_table(trainer: Trainer, key: str, table: pd.DataFrame, epoch: int) -> list[str]:
    """Log ``table`` under ``key``: a W&B Table, TensorBoard text, and always a CSV file."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, dataframe=table)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, table.to_markdown(index=False) if _has_tabulate() else table.to_string(), epoch)
    path = artifact_dir(trainer) / _file_name(key, epoch, ".csv")
    table.to_csv(path, index=False)
    return [str(path)]


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["artifact_dir", "log_figure", "log_table"]
