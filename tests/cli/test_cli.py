"""The kdlight command end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlight.cli import main

from conftest import REPO

DIGITS = REPO / "configs" / "digits"
FAST = ["--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.callbacks=[]"]


def run_cli(*args: str):
    return main(list(args))


def test_fit_teacher_then_distill_from_its_checkpoint(tmp_path):
    run_cli(
        "fit",
        "-c",
        str(DIGITS / "teacher.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    )
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints, "the teacher run saved no checkpoint"
    cli = run_cli("fit", "-c", str(DIGITS / "kd.yaml"), f"--model.init_args.teacher_checkpoint={checkpoints[0]}", *FAST)
    assert "train/loss_kd_epoch" in cli.trainer.callback_metrics
    assert "val/agreement" in cli.trainer.callback_metrics


def test_validate_and_test_subcommands(tmp_path):
    for sub in ("validate", "test"):
        cli = run_cli(
            sub,
            "-c",
            str(DIGITS / "scratch.yaml"),
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1",
        )
        assert f"{'val' if sub == 'validate' else 'test'}/acc" in cli.trainer.callback_metrics


def test_print_config_shows_the_resolved_objective(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", str(DIGITS / "dkd.yaml"), "--print_config")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "kdlight.objectives.DKD" in printed and "beta: 8.0" in printed


def test_unknown_model_class_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            "fit",
            "-c",
            str(DIGITS / "scratch.yaml"),
            "--model.init_args.model.class_path=kdlight.models.NoSuchNet",
            *FAST,
        )
    assert exit_info.value.code != 0
    assert "NoSuchNet" in capsys.readouterr().err


def test_unknown_objective_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        run_cli(
            "fit",
            "-c",
            str(DIGITS / "kd.yaml"),
            "--model.init_args.objective.class_path=kdlight.objectives.Nope",
            *FAST,
        )
    assert "kdlight.objectives.Nope" in capsys.readouterr().err


def test_nonpositive_temperature_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", str(DIGITS / "kd.yaml"), "--model.init_args.objective.init_args.temperature=0", *FAST)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kdlight: error: temperature must be > 0, got 0.0")


def test_missing_teacher_checkpoint_is_one_line(capsys):
    with pytest.raises(SystemExit):
        run_cli(
            "fit", "-c", str(DIGITS / "kd.yaml"), "--model.init_args.teacher_checkpoint=missing/teacher.ckpt", *FAST
        )
    err = capsys.readouterr().err
    assert "kdlight: error: teacher_checkpoint missing/teacher.ckpt does not exist" in err
    assert "Traceback" not in err


def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "kdlight", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "fit" in out.stdout and "validate" in out.stdout


def test_installed_console_script_exits_0_after_a_fit(tmp_path):
    """``kdlight fit ...`` as a user types it: the console-script wrapper calls ``sys.exit`` on the
    entry point's return value, so it must return None (a returned CLI object exits with 1)."""
    script = Path(sys.executable).parent / "kdlight"
    assert script.is_file(), "the kdlight console script is not installed next to this Python (pip install -e .)"
    command = [
        str(script),
        "fit",
        "-c",
        str(REPO / "configs" / "digits" / "scratch.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "KDLightCLI object" not in out.stderr + out.stdout


def test_optimizer_comes_from_the_model_config():
    cli = run_cli(
        "fit",
        "-c",
        str(DIGITS / "kd.yaml"),
        "--model.init_args.teacher_checkpoint=null",
        "--model.init_args.teacher_as_given=true",
        "--model.init_args.optimizer.class_path=torch.optim.SGD",
        "--model.init_args.optimizer.init_args.lr=0.1",
        *FAST,
    )
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.1


def test_first_fit_of_a_shipped_config_is_quiet(tmp_path, monkeypatch, caplog):
    """No 'checkpoint directory is not empty' warning for the run's own config.yaml (it is written
    after ModelCheckpoint's check), no warning for the frozen teacher's eval mode, no litlogger
    advertisement; Lightning's other messages still show, and config.yaml is still written."""
    import logging
    import warnings

    monkeypatch.chdir(tmp_path)  # the config's run directories are relative
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    run_cli("fit", "-c", str(DIGITS / "teacher.yaml"), *short)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        run_cli("fit", "-c", str(DIGITS / "kd.yaml"), *short)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is not empty" in m or "in eval mode" in m], messages
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text
    assert (tmp_path / "runs" / "digits" / "kd" / "version_0" / "config.yaml").is_file()


def test_console_script_imports_user_models_from_the_working_directory(tmp_path):
    """``class_path: my_package.TinyNet`` next to the user's config works with the ``kdlight`` script
    as it does with ``python -m kdlight`` (which puts the working directory on sys.path)."""
    (tmp_path / "my_package").mkdir()
    (tmp_path / "my_package" / "__init__.py").write_text(
        "import torch\n\nclass TinyNet(torch.nn.Module):\n"
        "    def __init__(self, width: int = 4):\n        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n\n"
        "    def forward(self, x):\n        return self.net(x)\n"
    )
    script = Path(sys.executable).parent / "kdlight"
    args = [
        str(script),
        "fit",
        "-c",
        str(DIGITS / "scratch.yaml"),
        "--model.init_args.model.class_path=my_package.TinyNet",
        "--print_config",
    ]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "my_package.TinyNet" in out.stdout
