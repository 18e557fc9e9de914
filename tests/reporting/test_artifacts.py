"""kdlight.reporting.artifacts: images and tables reach every kind of logger."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from kdlight.reporting.artifacts import artifact_dir, log_html, log_image, log_table


def _trainer(logger) -> Trainer:
    return Trainer(logger=logger, accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False)


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_csv_logger_gets_a_png_with_the_same_pixels(tmp_path):
    image = _image()
    (path,) = log_image(_trainer(CSVLogger(tmp_path, name="run")), "val/explain/saliency/heatmaps", image, epoch=3)
    assert path.endswith("val_explain_saliency_heatmaps_epoch003.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)


def test_tensorboard_gets_the_image_itself(tmp_path, monkeypatch):
    logger = TensorBoardLogger(tmp_path, name="run")
    calls = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda *args, **kwargs: calls.append((args, kwargs)))
    image = _image()
    assert log_image(_trainer(logger), "val/x", image, epoch=2) == []  # no PNG file needed
    ((args, kwargs),) = calls
    assert args[0] == "val/x" and args[1] is image and kwargs == {"global_step": 2, "dataformats": "HWC"}


def test_every_logger_gets_a_csv_file_of_the_table(tmp_path):
    table = pd.DataFrame({"class": [0, 1], "name": ["a", "b"], "mean": [0.25, float("nan")], "count": [3, 0]})
    (path,) = log_table(_trainer(CSVLogger(tmp_path, name="run")), "val/explain/saliency/per_class", table, epoch=4)
    assert path.endswith("val_explain_saliency_per_class_epoch004.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), table)


PAGE = '<div><span title="teacher: +0.5" style="background:#f4a582">caf\u00e9 &amp; co</span></div>'


def test_html_pages_are_written_beside_the_figures_for_every_logger(tmp_path):
    trainer = _trainer(CSVLogger(tmp_path, name="run"))
    (path,) = log_html(trainer, "val/explain/saliency/heatmaps_html", PAGE, epoch=2)
    assert path.endswith("val_explain_saliency_heatmaps_html_epoch002.html")
    assert Path(path).parent == artifact_dir(trainer)  # where the PNG of the same key goes
    assert Path(path).read_text(encoding="utf-8") == PAGE


def test_wandb_gets_the_page_as_wandb_html(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    logged = []
    run = SimpleNamespace(log=lambda record: logged.append(record))
    monkeypatch.setattr(WandbLogger, "experiment", property(lambda self: run))  # no W&B run is started
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    log_html(_trainer(logger), "val/x", PAGE, epoch=5)
    ((record),) = logged
    assert isinstance(record["val/x"], wandb.Html) and record["epoch"] == 5
    assert record["val/x"].html == PAGE  # the page itself, not a path to one, nothing injected
