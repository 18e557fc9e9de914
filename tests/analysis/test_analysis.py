"""kdlight.analysis: runs into pandas, figures, heatmaps from checkpoints, clear errors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from kdlight.analysis import (
    heatmaps_from_checkpoint,
    load_module,
    load_run,
    load_runs,
    plot_accuracy_vs_agreement,
    plot_curves,
    read_wandb_records,
    tidy_metrics,
)
from kdlight.cli import main

from conftest import REPO

DIGITS = REPO / "configs" / "digits"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _fit(config: str, out: Path, *extra: str) -> None:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "filename": "best",
                "monitor": "val/acc",
                "mode": "max",
                "save_last": True,
                "enable_version_counter": False,
            },
        },
    ]
    if config == "kd.yaml":
        callbacks.append(
            {
                "class_path": "kdlight.explain.ExplanationAgreement",
                "init_args": {
                    "methods": ["saliency"],
                    "every_n_epochs": 1,
                    "num_probes": 16,
                    "num_images": 2,
                    "faithfulness": False,
                },
            }
        )
    override = out.parent / f"{out.name}-callbacks.yaml"
    override.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    main(
        [
            "fit",
            "-c",
            str(DIGITS / config),
            "-c",
            str(override),
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.log_every_n_steps=1",
            f"--run_dir={out}",
            *QUIET,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 2-epoch CLI teacher (ClassifierModule) and a 2-epoch KD student distilled from it (CSV logs)."""
    base = tmp_path_factory.mktemp("analysis")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(base)
    torch.set_num_threads(1)
    try:
        _fit("teacher.yaml", base / "teacher")
        _fit("kd.yaml", base / "kd", f"--model.init_args.teacher_checkpoint={base / 'teacher' / 'best.ckpt'}")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    return {"teacher": base / "teacher", "kd": base / "kd"}


# -- load_run / load_runs ----------------------------------------------------------------------
def test_load_csv_run(runs):
    run = load_run(runs["kd"])
    assert run.kind == "csv"
    assert set(run.metrics["level"]) == {"epoch", "step"}
    epochs, steps = run.epochs, run.steps
    assert list(epochs["epoch"]) == [0, 1] and list(steps["step"]) == [0, 1, 2, 3]
    for key in (
        "train/loss",
        "train/loss_kd",
        "train/loss_ce",
        "val/acc",
        "val/agreement",
        "val/teacher_acc",
        "val/explain/saliency/rank_correlation",
        "val/explain/saliency/chance_rank_correlation",
    ):
        assert epochs[key].notna().all(), key
    assert {"train/loss", "train/loss_kd"} <= set(steps.columns) and "val/acc" not in steps.columns
    assert not any(c.endswith(("_step", "_epoch")) for c in run.metrics.columns)
    assert run.config["model"]["class_path"] == "kdlight.DistillationModule"  # config.yaml, the resolved config
    assert run.config["trainer"]["max_epochs"] == 2
    assert run.hparams["student"]["class_path"] == "kdlight.models.MLP"  # hparams.yaml
    assert run.methods == ["saliency"]
    assert list(run.tables.columns[:4]) == ["key", "split", "method", "epoch"]
    # per explained epoch, or once at the end of fit
    assert len(run.tables) in (10, 20) and set(run.tables["method"]) == {"saliency"}
    assert run.tables["epoch"].between(0, 2).all() and run.tables.groupby("epoch").size().eq(10).all()
    assert len(run.images) in (1, 2) and run.image("saliency") == run.images[-1] and run.images[-1].suffix == ".png"
    assert [p.name for p in run.checkpoints] == ["best.ckpt", "last.ckpt"] and run.best_checkpoint.is_file()
    best = run.best("val/acc")
    assert best["val/acc"] == epochs["val/acc"].max()
    assert "kind='csv'" in repr(run)


def test_load_runs_best_and_final(runs):
    table = load_runs([runs["kd"], runs["teacher"]])
    assert list(table["kind"]) == ["csv", "csv"]
    assert table.loc[0, "student"] == "MLP" and table.loc[0, "objective"] == "KD"
    kd = load_run(runs["kd"])
    assert table.loc[0, "val/acc"] == kd.epochs["val/acc"].max()
    assert table.loc[0, "best_checkpoint"].endswith("best.ckpt")
    final = load_runs([runs["kd"]], at="final")
    assert final.loc[0, "epoch"] == 1 and final.loc[0, "val/acc"] == kd.epochs["val/acc"].iloc[-1]
    with pytest.raises(ValueError, match="at must be"):
        load_runs([runs["kd"]], at="middle")
    with pytest.raises(ValueError, match="at least one run"):
        load_runs([])
    with pytest.raises(KeyError, match="not an epoch-level metric"):
        load_runs([runs["kd"]], monitor="val/nope")


def test_tidy_metrics_splits_step_and_epoch_levels():
    raw = pd.DataFrame(
        [
            {"epoch": 0, "step": 0, "train/loss_step": 1.0, "train/weight_kd": 0.5},
            {"epoch": 0, "step": 1, "train/loss_step": 0.8, "train/weight_kd": 0.6},
            {"epoch": 0, "step": 1, "lr-Adam": 0.01},
            {"epoch": 0, "step": 1, "val/acc": 0.5},
            {"epoch": 0, "step": 1, "train/loss_epoch": 0.9},
            {"epoch": 1, "step": 2, "train/loss_step": 0.7, "train/weight_kd": 0.7},
            {"epoch": 1, "step": 2, "lr-Adam": 0.001},
            {"epoch": 1, "step": 2, "val/acc": 0.6},
            {"epoch": 1, "step": 2, "train/loss_epoch": 0.7},
        ]
    )
    frame = tidy_metrics(raw)
    _check_levels(frame)
    # kdlight's own naming: the step value as train/loss, the epoch mean as train/loss_epoch
    renamed = raw.rename(columns={"train/loss_step": "train/loss"})
    _check_levels(tidy_metrics(renamed))


def _check_levels(frame):
    epochs = frame[frame["level"] == "epoch"]
    steps = frame[frame["level"] == "step"]
    assert list(epochs["epoch"]) == [0, 1] and list(epochs["train/loss"]) == [0.9, 0.7]
    assert list(epochs["val/acc"]) == [0.5, 0.6] and list(epochs["lr-Adam"]) == [0.01, 0.001]
    assert list(steps["step"]) == [0, 1, 2] and list(steps["train/loss"]) == [1.0, 0.8, 0.7]
    assert list(steps["train/weight_kd"]) == [0.5, 0.6, 0.7]  # on_step only: logged beside a _step metric
    assert epochs["train/weight_kd"].isna().all()


def test_every_public_name_resolves_from_the_package():
    import kdlight.analysis as analysis

    for name in analysis.__all__:
        assert getattr(analysis, name).__module__.startswith("kdlight.analysis."), name
    with pytest.raises(AttributeError, match="has no attribute 'nope'; it has: .*load_run"):
        _ = analysis.nope


def test_tidy_metrics_needs_epoch_and_step():
    with pytest.raises(ValueError, match="'epoch' and 'step'"):
        tidy_metrics(pd.DataFrame({"val/acc": [1.0]}))


# -- the W&B file reader on a synthetic run (the real one: tests/test_wandb.py) --------------------
def _write_wandb_log(path: Path, payloads: list[bytes]) -> None:
    """LevelDB-log framing as W&B writes it: 7-byte header, 32 KiB blocks, fragmented records."""
    block, out = 32768, bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\0" * left
                continue
            fragment, payload = payload[: left - 7], payload[left - 7 :]
            last = not payload
            kind = (1 if last else 2) if first else (4 if last else 3)
            out += struct.pack("<IHB", 0, len(fragment), kind) + fragment
            first = False
            if last:
                break
    path.write_bytes(bytes(out))


def test_wandb_reader_handles_records_across_blocks(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    def history(step: int, **values) -> bytes:
        record = pb.Record()
        for key, value in {"trainer/global_step": step, "_step": step, **values}.items():
            item = record.history.item.add()
            item.nested_key.append(key)
            item.value_json = json.dumps(value)
        return record.SerializeToString()

    config = pb.Record()
    item = config.config.update.add()
    item.key, item.value_json = "student", json.dumps({"class_path": "kdlight.models.MLP", "blob": "x" * 70000})
    payloads = [config.SerializeToString()]
    for step in range(300):
        payloads.append(history(step, epoch=step // 100, **{"train/loss_step": 1.0 / (step + 1)}))
        if step % 100 == 99:
            payloads.append(history(step, epoch=step // 100, **{"val/acc": step / 300, "train/loss_epoch": 0.5}))
    run_dir = tmp_path / "offline-run-20250101_000000-abc"
    run_dir.mkdir()
    _write_wandb_log(run_dir / "run-abc.wandb", payloads)
    assert len(list(read_wandb_records(run_dir / "run-abc.wandb"))) == len(payloads)
    run = load_run(run_dir)
    assert run.kind == "wandb" and len(run.config["student"]["blob"]) == 70000
    assert list(run.epochs["epoch"]) == [0, 1, 2] and list(run.epochs["val/acc"]) == [99 / 300, 199 / 300, 299 / 300]
    assert len(run.steps) == 300 and run.steps["train/loss"].iloc[0] == 1.0


# -- figures -------------------------------------------------------------------------------------
def test_figures(runs):
    run = load_run(runs["kd"])
    fig = plot_curves(run)
    assert isinstance(fig, Figure)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert {"val/acc", "val/agreement", "val/explain/saliency/rank_correlation"} <= set(labels)
    fig = plot_curves(runs["kd"], metrics=["val/acc"], title="x")
    assert fig.axes[0].get_title() == "x"
    with pytest.raises(ValueError, match="not epoch-level metrics"):
        plot_curves(run, metrics=["val/nope"])
    scatter = plot_accuracy_vs_agreement(
        [runs["kd"], runs["kd"]], x="val/explain/saliency/rank_correlation", chance=0.0
    )
    assert isinstance(scatter, Figure) and len(scatter.axes[0].collections[0].get_offsets()) == 2
    with pytest.raises(ValueError, match="not in the runs table"):
        plot_accuracy_vs_agreement(load_runs([runs["teacher"]]))  # a teacher run has no val/agreement


def test_heatmaps_from_checkpoint_draws_both_models_maps_of_the_chosen_samples(runs, digits):
    from kdlight.explain.plots import explanation_figure, figure_to_array

    indices = [0, 5, 7]
    fig = heatmaps_from_checkpoint(runs["kd"] / "best.ckpt", digits, indices=indices, method="saliency")
    assert isinstance(fig, Figure) and len(fig.axes) == 1  # digits are images: one mosaic, a row per probe
    # expected: signed input gradients of the teacher's predicted logit (saliency), from autograd
    module = load_module(runs["kd"] / "best.ckpt")
    x_all, y_all = digits.split_tensors("val")
    x, y = x_all[indices], y_all[indices]
    with torch.no_grad():
        t_pred, s_pred = module.teacher(x).argmax(-1), module.student(x).argmax(-1)

    def gradient(model):
        inputs = x.clone().requires_grad_()
        model(inputs).gather(1, t_pred[:, None]).sum().backward()
        return inputs.grad

    labels = [f"#{i} y={int(y[k])} t={int(t_pred[k])} s={int(s_pred[k])}" for k, i in enumerate(indices)]
    expected = explanation_figure(
        x, gradient(module.teacher), gradient(module.student), labels=labels, title="saliency (val) from best.ckpt"
    )
    drawn, wanted = figure_to_array(fig).astype(int), figure_to_array(expected).astype(int)
    assert drawn.shape == wanted.shape and abs(drawn - wanted).max() <= 1  # the same picture, up to rounding
    with pytest.raises(ValueError, match=r"out of range for the val split \(\d+ samples\)"):
        heatmaps_from_checkpoint(runs["kd"] / "best.ckpt", digits, indices=[10_000])
    with pytest.raises(ValueError, match="target must be"):
        heatmaps_from_checkpoint(runs["kd"] / "best.ckpt", digits, indices=[0], target="nobody")


def test_heatmaps_from_a_data_module_with_loaders_only(runs, digits):
    """A LightningDataModule without kdlight's extras (split_tensors, train_inputs) gives the same
    figure: its samples are read from its loader."""
    import lightning as L

    class LoadersOnly(L.LightningDataModule):
        def val_dataloader(self):
            return digits.val_dataloader()

    from kdlight.explain.plots import figure_to_array

    kdlight_dm = heatmaps_from_checkpoint(runs["kd"] / "best.ckpt", digits, indices=[1, 2])
    plain_dm = heatmaps_from_checkpoint(runs["kd"] / "best.ckpt", LoadersOnly(), indices=[1, 2])
    assert (figure_to_array(kdlight_dm) == figure_to_array(plain_dm)).all()


def test_load_module_restores_the_distilled_student(runs):
    module = load_module(runs["kd"] / "best.ckpt")
    state = torch.load(runs["kd"] / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, state[f"student.{key}"]), key
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, state[f"teacher.{key}"]), key
    assert not module.training


# -- bad input: one clear line -------------------------------------------------------------------
def test_missing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory .*nowhere does not exist"):
        load_run(tmp_path / "nowhere")


def test_directory_without_metrics_names_the_expected_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_run(tmp_path / "empty")
    message = str(err.value)
    assert "holds no metrics" in message and "metrics.csv" in message and "run-<id>.wandb" in message
    assert "\n" not in message


def test_parent_of_a_run_points_at_it(runs):
    with pytest.raises(FileNotFoundError, match=r"runs found below it: .*kd"):
        load_run(runs["kd"].parent)


def test_empty_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    with pytest.raises(ValueError, match="metrics.csv is empty"):
        load_run(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,step,val/acc\n")
    with pytest.raises(ValueError, match="no rows"):
        load_run(tmp_path)


def test_classifier_checkpoint_where_a_distillation_module_is_needed(runs, digits):
    with pytest.raises(ValueError) as err:
        heatmaps_from_checkpoint(runs["teacher"] / "best.ckpt", digits, indices=[0])
    message = str(err.value)
    assert "kdlight.ClassifierModule" in message and "kdlight.training.distillation.DistillationModule" in message
    from kdlight import ClassifierModule

    assert isinstance(load_module(runs["teacher"] / "best.ckpt", ClassifierModule), ClassifierModule)


def test_checkpoints_not_written_by_the_cli(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(1)}, "hyper_parameters": {}}, plain)
    with pytest.raises(
        ValueError, match="holds a kdlight.ClassifierModule but a kdlight.training.distillation.DistillationModule"
    ):
        load_module(plain)
    distilled = tmp_path / "distilled.ckpt"
    torch.save(
        {"state_dict": {"teacher.w": torch.zeros(1), "student.w": torch.zeros(1)}, "hyper_parameters": {}}, distilled
    )
    with pytest.raises(ValueError, match="does not record its teacher/student classes"):
        load_module(distilled)
    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(1)}, bare)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_module(bare)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_module(tmp_path / "missing.ckpt")
