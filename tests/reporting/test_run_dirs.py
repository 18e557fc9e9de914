"""Run directories: no command loses or rewrites what an earlier command wrote."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from kdlight.analysis import load_run
from kdlight.cli import main
from kdlight.reporting.runs import TEMP_MARK, AtomicCheckpointIO, RunCSVLogger, next_version

from conftest import REPO

DIGITS = REPO / "configs" / "digits"
QUICK = [
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
RUN = Path("runs/digits/teacher")


def kdlight(*args: str):
    return main(list(args))


def fit_teacher(*args: str):
    return kdlight("fit", "-c", str(DIGITS / "teacher.yaml"), "--trainer.max_epochs=1", *QUICK, *args)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links followed) with its content's hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def epochs_validated(metrics: Path) -> list[int]:
    with metrics.open(newline="") as file:
        return [int(float(r["epoch"])) for r in csv.DictReader(file) if r.get("val/acc")]


def test_each_fit_gets_a_new_version_and_the_links_follow_the_newest():
    fit_teacher()
    first = snapshot(RUN / "version_0")
    assert {"config.yaml", "metrics.csv", "best.ckpt", "last.ckpt"} <= set(first)
    assert (RUN / "best.ckpt").resolve() == (RUN / "version_0" / "best.ckpt").resolve()
    fit_teacher()
    assert snapshot(RUN / "version_0") == first  # untouched by the second fit
    assert (RUN / "best.ckpt").resolve() == (RUN / "version_1" / "best.ckpt").resolve()
    assert (RUN / "latest").resolve() == (RUN / "version_1").resolve()
    assert load_run(RUN).path.resolve() == (RUN / "version_1").resolve()


def test_run_dir_is_one_knob():
    fit_teacher("--run_dir=elsewhere/mine")
    assert (Path("elsewhere/mine/version_0/metrics.csv")).is_file()
    assert (Path("elsewhere/mine/best.ckpt")).is_file()
    assert not RUN.exists()


def test_test_and_validate_write_beside_the_checkpoint_and_never_over_the_fit():
    fit_teacher()
    fitted = snapshot(RUN / "version_0")
    for _ in range(2):
        for sub in ("test", "validate"):
            kdlight(sub, "-c", str(DIGITS / "teacher.yaml"), "--ckpt_path", str(RUN / "best.ckpt"), *QUICK)
    for sub in ("test", "validate"):
        for n in (0, 1):
            assert (RUN / "version_0" / sub / f"version_{n}" / "metrics.csv").is_file()
            assert (RUN / "version_0" / sub / f"version_{n}" / "config.yaml").is_file()
    after = {k: v for k, v in snapshot(RUN / "version_0").items() if not k.startswith(("test/", "validate/"))}
    assert after == fitted


def test_resumed_fit_continues_its_history_with_every_epoch_once():
    fit_teacher("--trainer.max_epochs=2")
    config = (RUN / "version_0" / "config.yaml").read_bytes()
    fit_teacher("--trainer.max_epochs=3", f"--ckpt_path={RUN / 'version_0' / 'last.ckpt'}")
    assert epochs_validated(RUN / "version_0" / "metrics.csv") == [0, 1, 2]
    assert (RUN / "version_0" / "config.yaml").read_bytes() == config
    assert (RUN / "version_0" / "config.resume1.yaml").is_file()
    assert not (RUN / "version_1").exists()


def test_resume_with_nothing_left_to_train_keeps_the_history():
    fit_teacher("--trainer.max_epochs=2")
    before = snapshot(RUN / "version_0")
    fit_teacher("--trainer.max_epochs=2", "--ckpt_path=last")
    after = snapshot(RUN / "version_0")
    assert after["metrics.csv"] == before["metrics.csv"]
    assert epochs_validated(RUN / "version_0" / "metrics.csv") == [0, 1]


def test_resuming_an_earlier_checkpoint_in_place_needs_overwrite():
    every_epoch = Path("every_epoch.yaml")
    every_epoch.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {filename: '{epoch}', save_top_k: -1}\n"
    )
    fit_teacher("--trainer.max_epochs=2", "-c", str(every_epoch))
    early = RUN / "version_0" / "epoch=0.ckpt"
    assert early.is_file()
    with pytest.raises(SystemExit):
        fit_teacher("--trainer.max_epochs=3", f"--ckpt_path={early}")
    fit_teacher("--trainer.max_epochs=2", f"--ckpt_path={early}", "--overwrite=true")
    assert epochs_validated(RUN / "version_0" / "metrics.csv") == [0, 1]
    assert list((RUN / "version_0").glob("metrics.before-resume-*.csv"))  # the redone epoch's rows, kept


def test_a_fit_that_fails_before_its_first_step_leaves_the_directory_as_it_was(capsys):
    fit_teacher()
    before = snapshot(RUN)
    with pytest.raises(SystemExit):
        kdlight(
            "fit",
            "-c",
            str(DIGITS / "kd.yaml"),
            "--run_dir",
            str(RUN),
            *QUICK,
            f"--model.init_args.teacher_checkpoint={RUN / 'best.ckpt'}",
            "--model.init_args.student.init_args.num_classes=5",
        )
    assert "10 classes but student outputs 5" in capsys.readouterr().err
    assert snapshot(RUN) == before
    assert sorted(p.name for p in RUN.iterdir()) == ["best.ckpt", "last.ckpt", "latest", "version_0"]


def test_checkpoint_directory_is_a_one_line_error(capsys):
    fit_teacher()
    with pytest.raises(SystemExit):
        kdlight("test", "-c", str(DIGITS / "teacher.yaml"), "--ckpt_path", str(RUN / "version_0"), *QUICK)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory, not a checkpoint file" in err[0] and "best.ckpt" in err[0]


def test_checkpoint_of_another_model_is_refused_naming_both(capsys):
    fit_teacher()
    with pytest.raises(SystemExit):
        kdlight("test", "-c", str(DIGITS / "scratch.yaml"), "--ckpt_path", str(RUN / "best.ckpt"), *QUICK)
    err = capsys.readouterr().err
    assert "holds another model than the config" in err
    assert "kdlight.models.CNN2d vs kdlight.models.MLP" in err
    assert not (RUN / "version_0" / "test").exists()


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    real = torch.load(RUN / "best.ckpt", weights_only=True)
    real["payload"] = _Payload(str(marker.resolve()))
    torch.save(real, path)
    return path


def test_a_crafted_local_checkpoint_runs_no_code(capsys):
    fit_teacher()
    marker = Path("pwned")
    evil = _crafted_checkpoint(Path("evil.ckpt"), marker)
    with pytest.raises(SystemExit):
        kdlight("test", "-c", str(DIGITS / "teacher.yaml"), "--ckpt_path", str(evil), *QUICK)
    assert not marker.exists()
    assert "weights" in capsys.readouterr().err.lower()


def test_a_crafted_checkpoint_served_over_http_runs_no_code(monkeypatch):
    fit_teacher()
    monkeypatch.setenv("TORCH_HOME", str(Path("torch_home").resolve()))
    marker = Path("pwned")
    Path("served").mkdir()
    _crafted_checkpoint(Path("served") / "evil.ckpt", marker)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="served")
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
        with pytest.raises((SystemExit, Exception)):
            kdlight("test", "-c", str(DIGITS / "teacher.yaml"), "--ckpt_path", url, *QUICK)
    finally:
        server.shutdown()
    assert not marker.exists()


def test_stale_checkpoint_temp_files_are_removed_at_the_next_start():
    fit_teacher()
    stale = RUN / "version_0" / f"last.ckpt{TEMP_MARK}999999999"
    stale.write_bytes(b"half a checkpoint")
    fit_teacher(f"--ckpt_path={RUN / 'version_0' / 'last.ckpt'}", "--trainer.max_epochs=2")
    assert not stale.exists()


def test_atomic_checkpoint_io_leaves_a_complete_file_and_no_temp_file():
    path = Path("out") / "model.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["model.ckpt"]


def test_run_csv_logger_sets_aside_the_rows_a_resume_redoes():
    logger = RunCSVLogger(save_dir="log", name="", version="")
    for step in range(6):
        logger.log_metrics({"loss": float(step)}, step=step)
    logger.save()
    original = (Path("log") / "metrics.csv").read_text().splitlines()
    aside = logger.set_aside_after(4)
    kept = (Path("log") / "metrics.csv").read_text().splitlines()
    moved = aside.read_text().splitlines()
    assert kept[0] == moved[0] == original[0]  # both keep the header
    assert kept[1:] + moved[1:] == original[1:]
    assert [int(r.split(",")[-1]) for r in kept[1:]] == [0, 1, 2, 3]


def test_next_version_counts_past_the_highest():
    root = Path("r")
    assert next_version(root).name == "version_0"
    (root / "version_0").mkdir(parents=True)
    (root / "version_3").mkdir()
    (root / "notes").mkdir()
    assert next_version(root).name == "version_4"


def test_no_run_dir_keeps_lightning_defaults():
    kdlight(
        "fit",
        "-c",
        str(DIGITS / "teacher.yaml"),
        "--run_dir=null",
        "--trainer.max_epochs=1",
        *QUICK,
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    )
    assert not Path("runs").exists()
    assert os.listdir(".") == [] or all(not p.startswith("runs") for p in os.listdir("."))


def test_without_run_dir_a_second_fit_into_the_same_directory_is_one_line(capsys):
    args = [
        "--run_dir=null",
        "--trainer.logger=false",
        "--trainer.default_root_dir=mine",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    ]
    fit_teacher(*args)
    first = (Path("mine") / "config.yaml").read_bytes()
    with pytest.raises(SystemExit):
        fit_teacher(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert "is an earlier run's config and is never overwritten; set run_dir" in err[-1]
    assert (Path("mine") / "config.yaml").read_bytes() == first
