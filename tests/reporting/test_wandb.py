"""W&B logging end to end, offline: metrics, heatmaps, per-class tables, config, checkpoint artifact.

A W&B 0.31 offline run writes no ``wandb-summary.json`` and no ``files/config.yaml`` and the Python
package no longer has a reader for its ``run-<id>.wandb`` file, so the run is read back with
:func:`kdlight.analysis.read_wandb_records` (the raw records) and :func:`kdlight.analysis.load_run`;
media files are checked under ``files/media``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

import kdlight.cli
from kdlight.analysis import load_run, read_wandb_records
from kdlight.reporting.artifacts import CLI_CONFIG_KEY, LoggerSaveConfigCallback

from conftest import REPO

wandb = pytest.importorskip("wandb")

FRAGMENT = REPO / "configs" / "logger" / "wandb.yaml"
CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: ckpt, filename: best, monitor: val/acc, mode: max, save_last: true, enable_version_counter: false}
    - class_path: kdlight.explain.ExplanationAgreement
      init_args: {methods: [saliency], every_n_epochs: 1, num_probes: 16, num_images: 2, faithfulness: false}
"""


class _CLIWithConfigLogging(kdlight.cli.KDLightCLI):
    """KDLightCLI with the resolved config sent to the loggers: a no-op once kdlight/cli/__init__.py sets
    ``save_config_callback=LoggerSaveConfigCallback`` by default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)
        super().__init__(*args, **kwargs)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, with its data/cache/config folders inside the test's directory."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    yield
    if wandb.run is not None:
        wandb.finish()


def _records(run_dir: Path, timeout: float = 30.0) -> list:
    """The records of a finished W&B run file. ``finish()`` can return before W&B's writer has
    flushed the file, so wait (bounded) for the exit record that ends it."""
    (run_file,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_wandb_records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _raw_run(run_dir: Path) -> tuple[set[str], dict]:
    """History keys and the config of a W&B run file."""
    keys: set[str] = set()
    config: dict = {}
    for record in _records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys.update(item.key or item.nested_key[0] for item in record.history.item)
        elif kind == "config":
            config.update(
                {item.key or item.nested_key[0]: json.loads(item.value_json) for item in record.config.update}
            )
    return keys, config


def test_fit_with_the_wandb_fragment_logs_everything_offline(tmp_path, offline_wandb, monkeypatch):
    monkeypatch.setattr(kdlight.cli, "KDLightCLI", _CLIWithConfigLogging)
    (tmp_path / "callbacks.yaml").write_text(CALLBACKS)
    save_dir = tmp_path / "wandb-runs"
    cli = kdlight.cli.main(
        [
            "fit",
            "-c",
            str(REPO / "configs" / "digits" / "kd.yaml"),
            "-c",
            str(FRAGMENT),
            "-c",
            str(tmp_path / "callbacks.yaml"),
            "--model.init_args.teacher_checkpoint=null",
            "--model.init_args.teacher_as_given=true",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--run_dir={save_dir}",  # the logger follows run_dir
            "--trainer.logger.init_args.offline=true",
        ]
    )
    logger = cli.trainer.logger
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    assert run_dir.parent == save_dir / "version_0" / "wandb" and run_dir.name.startswith("offline-run-")

    keys, config = _raw_run(run_dir)
    for key in ("train/loss", "train/loss_kd", "train/loss_ce"):  # step values as <key> or <key>_step
        assert {key, f"{key}_step"} & keys and f"{key}_epoch" in keys, (
            f"{key} missing from the W&B history: {sorted(keys)}"
        )
    for key in (
        "val/acc",
        "val/agreement",
        "val/teacher_acc",
        "val/explain/saliency/rank_correlation",
        "val/explain/saliency/chance_rank_correlation",
        "val/explain/saliency/heatmaps",
        "val/explain/saliency/per_class",
        "epoch",
        "trainer/global_step",
    ):
        assert key in keys, f"{key} missing from the W&B history; it has {sorted(keys)}"

    # heatmap figures and per-class tables: per explained epoch, or once at the end of fit
    images = sorted((run_dir / "files" / "media" / "images").rglob("*.png"))
    tables = sorted((run_dir / "files" / "media" / "table").rglob("*.table.json"))
    assert 1 <= len(images) <= 2 and 1 <= len(tables) <= 2, (images, tables)
    for path in tables:
        table = json.loads(path.read_text())
        assert table["columns"] == ["class", "name", "mean", "count", "skipped"] and len(table["data"]) == 10

    # the module's hyper-parameters (class paths) and the resolved CLI config
    assert config["student"]["class_path"] == "kdlight.models.MLP"
    resolved = config[CLI_CONFIG_KEY]
    assert resolved["trainer"]["max_epochs"] == 2 and resolved["seed_everything"] == 0
    assert resolved["data"]["class_path"] == "kdlight.data.DigitsDataModule"
    assert resolved["model"]["init_args"]["objective"]["class_path"] == "kdlight.objectives.KD"
    saved = yaml.safe_load((run_dir / "files" / f"{CLI_CONFIG_KEY}.yaml").read_text())
    assert saved == resolved

    # the same run through kdlight.analysis
    run = load_run(run_dir)
    assert run.kind == "wandb" and run.finished and list(run.epochs["epoch"]) == [0, 1]
    for key in ("train/loss", "train/loss_kd", "val/acc", "val/agreement", "val/explain/saliency/rank_correlation"):
        assert run.epochs[key].notna().all(), key
    assert {"train/loss", "train/loss_kd"} <= set(run.steps.columns) and len(run.steps) == 4
    assert run.config["trainer"]["max_epochs"] == 2
    assert len(run.tables) == 10 * len(tables) and set(run.tables["method"]) == {"saliency"}
    assert run.tables["epoch"].between(0, 2).all()
    assert len(run.images) == len(images) and all(p.is_file() for p in run.images)
    assert run.image("saliency") == max(run.images, key=lambda p: int(run.media.set_index("path").loc[str(p), "epoch"]))
    assert {p.name for p in run.checkpoints} == {"best.ckpt", "last.ckpt"}


def test_wandb_fragment_sets_log_model():
    """The fragment names ``log_model`` (``all``/``true`` uploads the checkpoints as W&B model
    artifacts when online; Lightning refuses it together with ``offline: true``)."""
    init_args = yaml.safe_load(FRAGMENT.read_text())["trainer"]["logger"]["init_args"]
    assert "log_model" in init_args


def test_read_wandb_records_rejects_other_files(tmp_path):
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(read_wandb_records(bogus))


def test_config_callback_leaves_csv_logs_alone(tmp_path):
    """With a CSVLogger the resolved config stays in config.yaml beside metrics.csv, not in hparams.yaml."""
    kdlight.cli.KDLightCLI(
        args=[
            "fit",
            "-c",
            str(REPO / "configs" / "digits" / "scratch.yaml"),
            "--trainer.callbacks=[]",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            f"--run_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
        save_config_callback=LoggerSaveConfigCallback,
    )
    assert yaml.safe_load((tmp_path / "version_0" / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
    assert CLI_CONFIG_KEY not in yaml.safe_load((tmp_path / "version_0" / "hparams.yaml").read_text())
