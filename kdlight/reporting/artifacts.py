"""Send figures (images, HTML pages), tables and the resolved config to whichever logger a trainer
has (W&B, TensorBoard, CSV files)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

if TYPE_CHECKING:  # pandas costs ~0.3 s to import: `kdlight --help` and config errors do without it
    import pandas as pd

#: W&B config key (and file name stem in the W&B run's files) of the resolved LightningCLI config
CLI_CONFIG_KEY = "cli_config"


def artifact_dir(trainer: Trainer) -> Path:
    """``<log_dir>/explain`` of the first logger, else ``<default_root_dir>/explain``."""
    logger = trainer.loggers[0] if trainer.loggers else None
    base = getattr(logger, "log_dir", None) or trainer.default_root_dir
    path = Path(base) / "explain"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_name(key: str, step: int, suffix: str) -> str:
    return f"{key.replace('/', '_')}_epoch{step:03d}{suffix}"


def log_image(trainer: Trainer, key: str, image: np.ndarray, epoch: int) -> list[str]:
    """Log an RGB ``[H, W, 3]`` uint8 ``image`` under ``key`` to every logger; loggers without
    images get a PNG file. Returns the PNG paths written (empty when every logger took it)."""
    written: list[str] = []
    needs_file = not trainer.loggers
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Image(image), "epoch": epoch, "trainer/global_step": trainer.global_step})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=epoch, dataformats="HWC")
        else:
            needs_file = True
    if needs_file:
        from PIL import Image

        path = artifact_dir(trainer) / _file_name(key, epoch, ".png")
        Image.fromarray(image).save(path, compress_level=1)
        written.append(str(path))
    return written


def log_html(trainer: Trainer, key: str, html: str, epoch: int) -> list[str]:
    """Log a self-contained ``html`` page under ``key``: a ``wandb.Html`` for W&B, and always an
    ``.html`` file under ``<run>/explain/`` (beside the figure's PNG). Returns the file's path."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            page = wandb.Html(html, inject=False, data_is_not_path=True)
            logger.experiment.log({key: page, "epoch": epoch, "trainer/global_step": trainer.global_step})
    path = artifact_dir(trainer) / _file_name(key, epoch, ".html")
    path.write_text(html, encoding="utf-8")
    return [str(path)]


def log_table(trainer: Trainer, key: str, table: pd.DataFrame, epoch: int) -> list[str]:
    """Log ``table`` under ``key``: a W&B Table, TensorBoard text, and always a CSV file."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            # with the epoch (WandbLogger.log_table would drop it), like log_image
            logger.experiment.log(
                {key: wandb.Table(dataframe=table), "epoch": epoch, "trainer/global_step": trainer.global_step}
            )
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(
                key, table.to_markdown(index=False) if _has_tabulate() else table.to_string(), epoch
            )
    path = artifact_dir(trainer) / _file_name(key, epoch, ".csv")
    table.to_csv(path, index=False)
    return [str(path)]


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _writes_config_file(logger: Any, trainer: Trainer) -> bool:
    """True for file loggers whose log_dir already gets LightningCLI's ``config.yaml``."""
    # not trainer.log_dir: it broadcasts (a collective) and save_config runs on rank 0 only, so under
    # DDP rank 0 would wait in that broadcast forever; this is the directory trainer.log_dir names
    first = trainer.loggers[0] if trainer.loggers else None
    if first is None:
        config_dir = trainer.default_root_dir
    else:
        config_dir = first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir
    return isinstance(logger, (CSVLogger, TensorBoardLogger)) and str(Path(logger.log_dir)) == str(Path(config_dir))


def log_config(trainer: Trainer, config: dict[str, Any]) -> None:
    """Hand the resolved run config to loggers that do not keep LightningCLI's ``config.yaml``.

    W&B: the run config gets it under ``cli_config`` (searchable in the UI, read back by
    :func:`kdlight.analysis.load_run`) and the run's files a ``cli_config.yaml`` (uploaded with the
    run; ``kdlight fit -c cli_config.yaml`` repeats it). Other loggers without that file
    (MLflow, Comet, ...) get it through ``log_hyperparams``; CSV / TensorBoard loggers whose
    ``log_dir`` holds ``config.yaml`` are left alone.
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams({CLI_CONFIG_KEY: config})
            run_files = Path(logger.experiment.dir)
            run_files.mkdir(parents=True, exist_ok=True)
            (run_files / f"{CLI_CONFIG_KEY}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        elif not _writes_config_file(logger, trainer):
            logger.log_hyperparams({CLI_CONFIG_KEY: config})


class LoggerSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's SaveConfigCallback (``config.yaml`` in ``trainer.log_dir``) that also logs the
    resolved config to W&B and other loggers (:func:`log_config`). Use it with
    ``LightningCLI(save_config_callback=LoggerSaveConfigCallback)``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            self._save(trainer, pl_module, stage)
        # in fit, written at on_fit_start: after ModelCheckpoint's setup, which warns about a
        # non-empty checkpoint directory (this run's own config.yaml, when they share it)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module, "fit")

    def _save(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Lightning's save, with its refusal to overwrite an earlier run's config as one line."""
        try:
            super().setup(trainer, pl_module, stage)
        except RuntimeError as err:
            if "to NOT exist" not in str(err):
                raise
            path = str(err).split(" expected ", 1)[-1].split(" to NOT exist", 1)[0]
            raise ValueError(
                f"{path} is an earlier run's config and is never overwritten; set run_dir (every fit then writes "
                "a new version_<n>) or point default_root_dir / the logger elsewhere"
            ) from None

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        log_config(trainer, config)


__all__ = [
    "CLI_CONFIG_KEY",
    "LoggerSaveConfigCallback",
    "artifact_dir",
    "log_config",
    "log_html",
    "log_image",
    "log_table",
]
