"""A distillation fit stopped or killed part-way and resumed from last.ckpt ends exactly where an
uninterrupted run ends, driven through ``kdlight.cli.main`` as a user would.

What makes this exact (``deterministic: true`` in the configs):

* the shuffling of the training loader is a pure function of ``(seed, epoch)``
  (:class:`kdlight.data.base.EpochShuffleSampler`; Lightning calls ``set_epoch`` on resume too), so
  epoch 2 of a resumed run sees the batches epoch 2 of an uninterrupted run sees;
* the checkpoint holds the student, the teacher, the objective's trainable parts (the Hint
  regressor, rebuilt in ``on_load_checkpoint`` before its weights are loaded), the optimizer state
  and the epoch, which drives epoch-dependent schedules (DKD's warm-up).

* the checkpoint also holds the RNG states (torch, CUDA, numpy, Python; Lightning saves none),
  restored when training starts, so dropout draws on as in an uninterrupted run (single process;
  under DDP a resumed fit re-seeds).
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback

from kdlight.cli import main
from kdlight.data import DigitsDataModule
from kdlight.data.base import EpochShuffleSampler

from conftest import REPO

DIGITS = REPO / "configs" / "digits"
TEACHER = Path("runs/digits/teacher/best.ckpt")  # where the digits distillation configs read the teacher
SHORT = ["--trainer.limit_train_batches=4"]  # 4 batches of 64 per epoch: seconds per run
EPOCHS = 4

pytestmark = pytest.mark.slow  # about a dozen short CLI runs on 2 CPU cores


@contextmanager
def working_dir(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


def fit(config: str, *extra: str):
    """``kdlight fit -c configs/digits/<config>.yaml ...`` in the current directory."""
    return main(["fit", "-c", str(DIGITS / f"{config}.yaml"), *SHORT, *extra])


def run_dir(config: str) -> Path:
    """The first fit's version directory (a resumed fit continues in it)."""
    return Path("runs/digits") / config / "version_0"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def csv_rows(path: Path) -> pd.DataFrame:
    """Every row of a CSV logger's metrics.csv."""
    return pd.read_csv(path / "metrics.csv")


def row_set(frame: pd.DataFrame) -> list[str]:
    """The rows of ``frame`` as canonical strings of their non-empty cells, sorted."""
    return sorted(
        repr(sorted((str(k), repr(v)) for k, v in row.items() if pd.notna(v))) for row in frame.to_dict("records")
    )


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal logged values (columns in any order; a column all-NaN in one frame may be absent there)."""
    columns = sorted(set(a.columns) | set(b.columns))
    a, b = a.reindex(columns=columns).reset_index(drop=True), b.reindex(columns=columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_dtype=False)


def tensors_equal(a, b, where: str = "") -> None:
    """Recursive exact comparison of nested dicts / lists / tensors / numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for key in a:
            tensors_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def resume(config: str, *extra: str):
    """``kdlight fit ... --trainer.max_epochs=4 --ckpt_path runs/digits/<config>/version_0/last.ckpt``.

    Returns the CLI and the CSV rows of the run: the resumed fit continues the first process's
    ``metrics.csv`` (kdlight.reporting.runs), so it holds every epoch once. Every caller stopped the first
    process after epoch 1 (a 2-epoch fit, or a kill inside epoch 2): the configs' second
    ModelCheckpoint writes last.ckpt after every epoch, so nothing is trained twice.
    """
    resumed_from = load(run_dir(config) / "last.ckpt")["epoch"]
    assert resumed_from == 1, f"last.ckpt holds epoch {resumed_from}, not the last finished epoch 1"
    before = csv_rows(run_dir(config))
    cli = fit(config, f"--trainer.max_epochs={EPOCHS}", *extra, "--ckpt_path", str(run_dir(config) / "last.ckpt"))
    rows = csv_rows(run_dir(config))
    # the first process's rows up to its checkpoint stay as they were, the resumed epochs follow; rows
    # logged at or after the checkpoint's step (the first fit's end-of-fit explanation) are set aside
    aside = [pd.read_csv(p) for p in run_dir(config).glob("metrics.before-resume-*.csv")]
    kept = rows[rows["epoch"] <= resumed_from]
    both = pd.concat([kept, *aside])
    assert row_set(both[both["epoch"] <= resumed_from]) == row_set(before[before["epoch"] <= resumed_from])
    assert row_set(pd.concat([kept, *aside])) == row_set(before)  # nothing the first process logged is lost
    assert sorted(rows["epoch"].unique()) == list(range(EPOCHS)), rows
    return cli, rows


def final_state(cli) -> dict:
    """Where a fit ended: the module's weights (student, teacher, regressor), the optimizer's state,
    the counters and the best monitored score."""
    trainer = cli.trainer
    return {
        "model": copy.deepcopy(cli.model.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_score": trainer.checkpoint_callback.best_model_score,
    }


def assert_same_end(straight: dict, resumed_cli, resumed_rows: pd.DataFrame) -> None:
    """Same final weights, optimizer state, counters and best score; same logged metrics of every epoch.

    (The last.ckpt files are not compared: they hold the callbacks' states, which differ with where
    the process boundary was even when training was identical.)
    """
    tensors_equal(straight["final"], final_state(resumed_cli), "final")
    rows = straight["rows"]
    assert sorted(rows["epoch"].unique()) == list(range(EPOCHS))
    same_rows(rows, resumed_rows)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A briefly trained digits teacher, saved by ``kdlight fit -c configs/digits/teacher.yaml``."""
    with working_dir(tmp_path_factory.mktemp("teacher")) as root:
        main(["fit", "-c", str(DIGITS / "teacher.yaml"), "--trainer.max_epochs=2", "--trainer.logger=false"])
        return root / TEACHER


def place_teacher(teacher: Path) -> None:
    TEACHER.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(teacher, TEACHER)


@pytest.fixture(scope="module")
def straight(teacher, tmp_path_factory):
    """Uninterrupted 4-epoch runs of the Hint and DKD configs (run on first use)."""
    root = tmp_path_factory.mktemp("straight")
    done: dict[str, dict] = {}

    def get(config: str, *extra: str) -> dict:
        key = " ".join((config, *extra))
        if key not in done:
            with working_dir(root / key.replace(" ", "_").replace("=", "-")) as where:
                place_teacher(teacher)
                cli = fit(config, f"--trainer.max_epochs={EPOCHS}", *extra)
                done[key] = {"dir": where, "final": final_state(cli), "rows": csv_rows(run_dir(config))}
        return done[key]

    return get


# -- the sampler: a pure function of (seed, epoch) ---------------------------------------------------


def epoch_order(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return [int(i) for i in loader.sampler]


def test_training_order_is_a_pure_function_of_seed_and_epoch():
    first, second = DigitsDataModule(seed=0).train_dataloader(), DigitsDataModule(seed=0).train_dataloader()
    assert isinstance(first.sampler, EpochShuffleSampler)
    orders = [epoch_order(first, e) for e in range(4)]
    torch.manual_seed(1234)  # the global RNG plays no part
    assert epoch_order(second, 3) == orders[3] and epoch_order(second, 2) == orders[2]  # no history needed
    assert epoch_order(first, 2) == orders[2]  # asking again gives the same order
    assert len({tuple(o) for o in orders}) == 4  # a new permutation every epoch
    assert all(sorted(o) == list(range(len(orders[0]))) for o in orders)
    assert epoch_order(DigitsDataModule(seed=1).train_dataloader(), 0) != orders[0]
    # the batches follow the sampler: the first batch of epoch 2 is samples orders[2][:64]
    x_all, _ = DigitsDataModule(seed=0).split_tensors("train")
    first.sampler.set_epoch(2)
    x = next(iter(first))["inputs"]
    assert torch.equal(x, x_all[orders[2][:64]])


# -- resume equals uninterrupted ---------------------------------------------------------------------


@pytest.mark.parametrize("config", ["hint", "dkd"])
def test_stopped_and_resumed_fit_equals_uninterrupted_fit(config, teacher, straight, tmp_path):
    """fit 2 epochs; then ``--trainer.max_epochs=4 --ckpt_path runs/digits/<config>/last.ckpt``."""
    with working_dir(tmp_path / "resumed"):
        place_teacher(teacher)
        fit(config, "--trainer.max_epochs=2")
        cli, rows = resume(config)
    assert_same_end(straight(config), cli, rows)
    if config == "dkd":  # the warm-up (e + 1) / 5 followed the restored epoch counter
        logged = rows.dropna(subset=["train/weight_dkd"])
        assert list(logged["epoch"]) == [2] and logged["train/weight_dkd"].tolist() == pytest.approx([0.6])
    else:  # the regressor was restored and kept training, not rebuilt from scratch
        state = cli.model.objective.state_dict()
        assert any(k.startswith("parts.1.regressor.") for k in state)


def test_resumed_fit_with_a_dropout_student_equals_uninterrupted_fit(teacher, straight, tmp_path):
    """Dropout draws random numbers every step: the checkpoint's RNG state, restored when training
    starts, makes them continue as in the uninterrupted run."""
    dropout = "--model.init_args.student.init_args.dropout=0.3"
    with working_dir(tmp_path / "resumed"):
        place_teacher(teacher)
        fit("kd", "--trainer.max_epochs=2", dropout)
        cli, rows = resume("kd", dropout)
    assert_same_end(straight("kd", dropout), cli, rows)


class KillInEpoch(Callback):
    """SIGKILL this process at batch ``batch`` of epoch ``epoch``: no cleanup, no extra checkpoint."""

    def __init__(self, epoch: int = 2, batch: int = 2) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def test_killed_and_resumed_fit_equals_uninterrupted_fit(teacher, straight, tmp_path):
    """``kdlight fit`` SIGKILLed in the middle of epoch 2 (a subprocess), then resumed from last.ckpt."""
    config = "hint"
    with working_dir(tmp_path / "resumed"):
        place_teacher(teacher)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS=str(torch.get_num_threads()),
        )  # same float summation order as in-process runs
        args = [
            sys.executable,
            "-m",
            "kdlight",
            "fit",
            "-c",
            str(DIGITS / f"{config}.yaml"),
            *SHORT,
            f"--trainer.max_epochs={EPOCHS}",
            '--trainer.callbacks+={"class_path": "test_resume.KillInEpoch", "init_args": {"epoch": 2, "batch": 2}}',
        ]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        assert load(run_dir(config) / "last.ckpt")["epoch"] <= 1  # nothing of the killed epoch 2 was saved
        cli, rows = resume(config)
    assert_same_end(straight(config), cli, rows)


# -- the checkpoint is self-contained: it carries the teacher ------------------------------------------


def test_checkpoint_holds_the_teacher_weights(teacher, straight):
    from kdlight.core.weights import _extract_state_dict

    with working_dir(straight("hint")["dir"]):
        state = load(run_dir("hint") / "last.ckpt")["state_dict"]
    source = _extract_state_dict(load(teacher), teacher)  # the ClassifierModule's network
    saved = {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    tensors_equal(saved, source, "teacher")


def test_resume_uses_the_checkpointed_teacher_not_a_changed_teacher_file(teacher, straight, tmp_path):
    """The teacher file is overwritten (a re-trained teacher) between the two halves: the resumed run
    still distils from the teacher it started with, which the checkpoint holds."""
    with working_dir(tmp_path / "resumed"):
        place_teacher(teacher)
        fit("hint", "--trainer.max_epochs=2")
        other = load(TEACHER)
        other["state_dict"] = {
            k: torch.randn_like(v) if v.is_floating_point() else v for k, v in other["state_dict"].items()
        }
        torch.save(other, TEACHER)
        cli, rows = resume("hint")
    assert_same_end(straight("hint"), cli, rows)


def test_resume_after_the_teacher_file_was_deleted_with_the_same_command(teacher, straight, tmp_path):
    """Waits on kdlight/cli/__init__.py: with ``--ckpt_path`` pointing at an existing checkpoint, a missing
    ``teacher_checkpoint`` file must not stop the run (the checkpoint holds the teacher).

    Today ``DistillationModule.__init__`` reads the file and fails. ``--model.init_args.teacher_checkpoint=null``
    is no way out: on ``--ckpt_path`` LightningCLI (>= 2.5) replaces the model's arguments with the
    hyperparameters saved in the checkpoint, which name the file again.
    """
    with working_dir(tmp_path / "resumed"):
        place_teacher(teacher)
        fit("dkd", "--trainer.max_epochs=2")
        TEACHER.unlink()
        cli, rows = resume("dkd")
    assert_same_end(straight("dkd"), cli, rows)
