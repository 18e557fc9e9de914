"""kdlight.reporting.artifacts: images and tables reach every kind of logger."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from kdlight.reporting.artifacts import log_image, log_table


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
