"""Compressed students checkpoint, reload to the same logits, and teach the next student."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from kdlight import DistillationModule
from kdlight.compression import PRUNED_KEY, StructuredPruning, StudentPruning
from kdlight.core.pruned import shape_mismatch_message
from kdlight.models import CNN2d
from kdlight.objectives import KD

from conftest import digits_student, digits_teacher, tiny_trainer


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def distiller(teacher_checkpoint, student=None) -> DistillationModule:
    return DistillationModule(
        digits_teacher(), student or digits_student(), KD(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
    )


def fit_and_save(digits, teacher_checkpoint, tmp_path, compression, epochs=2):
    module = distiller(teacher_checkpoint, CNN2d(channels=[8, 16], hidden=32))
    saver = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = tiny_trainer(
        max_epochs=epochs, callbacks=[compression, saver], enable_checkpointing=True, limit_train_batches=4
    )
    trainer.fit(module, datamodule=digits)
    return module.eval(), saver.last_model_path or saver.best_model_path


def probe_logits(model, digits) -> torch.Tensor:
    x = digits.example_input(16) if hasattr(digits, "example_input") else next(iter(digits.val_dataloader()))[0]
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("at_epoch", [0, 1])
def test_channel_pruned_student_reloads_to_the_same_logits(digits, teacher_checkpoint, tmp_path, at_epoch):
    pruned, path = fit_and_save(digits, teacher_checkpoint, tmp_path, StructuredPruning(ratio=0.5, at_epoch=at_epoch))
    dense_params = sum(p.numel() for p in CNN2d(channels=[8, 16], hidden=32).parameters())
    assert sum(p.numel() for p in pruned.student.parameters()) < 0.6 * dense_params
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[PRUNED_KEY]["student"]["conv1.0"]["attrs"]["out_channels"] == 4
    fresh = distiller(teacher_checkpoint, CNN2d(channels=[8, 16], hidden=32))  # the config's dense architecture
    trainer = tiny_trainer(callbacks=[StructuredPruning(ratio=0.5, at_epoch=at_epoch)])
    trainer.test(fresh, datamodule=digits, ckpt_path=path, verbose=False)
    assert torch.equal(probe_logits(fresh.student, digits), probe_logits(pruned.student, digits))


def test_sparse_student_reloads_into_the_dense_architecture(digits, teacher_checkpoint, tmp_path):
    pruned, path = fit_and_save(digits, teacher_checkpoint, tmp_path, StudentPruning(amount=0.9, schedule="one_shot"))
    fresh = distiller(teacher_checkpoint, CNN2d(channels=[8, 16], hidden=32))
    tiny_trainer().test(fresh, datamodule=digits, ckpt_path=path, verbose=False)
    assert torch.equal(probe_logits(fresh.student, digits), probe_logits(pruned.student, digits))


def test_channel_pruned_checkpoint_teaches_the_next_student(digits, teacher_checkpoint, tmp_path):
    pruned, path = fit_and_save(digits, teacher_checkpoint, tmp_path, StructuredPruning(ratio=0.5))
    # teacher-assistant chain: the config names the dense architecture; the record rebuilds it
    nxt = DistillationModule(
        CNN2d(channels=[8, 16], hidden=32), digits_student(), KD(), teacher_checkpoint=path, optimizer=adam
    )
    assert torch.equal(probe_logits(nxt.teacher, digits), probe_logits(pruned.student, digits))
    tiny_trainer(limit_train_batches=2).fit(nxt, datamodule=digits)


def test_pruned_weights_in_a_dense_model_without_the_record_are_one_line(digits, teacher_checkpoint, tmp_path):
    _, path = fit_and_save(digits, teacher_checkpoint, tmp_path, StructuredPruning(ratio=0.5), epochs=1)
    state = {k.removeprefix("student."): v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}
    message = shape_mismatch_message(path, state, CNN2d(channels=[8, 16], hidden=32))
    assert "holds tensors of the wrong shape for the config's CNN2d" in message and "\n" not in message
    assert "conv1.0.weight [4, 1, 3, 3] (config: [8, 1, 3, 3])" in message


@pytest.mark.slow
def test_shipped_compression_configs_run_through_the_cli(digits, teacher_checkpoint, tmp_path):
    """The YAML path: StudentInit + StudentPruning/StructuredPruning + CompressedCheckpoint via `kdlight fit`,
    then `kdlight test` of the channel-pruned best.ckpt with the same config."""
    from kdlight.cli import main

    from conftest import REPO

    dense = tmp_path / "dense.pt"
    torch.save(
        __import__("kdlight.models", fromlist=["MLP"]).MLP(64, 10, hidden=[32]).state_dict(), dense
    )  # a stand-in dense student
    teacher = torch.load(teacher_checkpoint, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("model."): v for k, v in teacher.items()}, tmp_path / "teacher.pt")
    common = [
        f"--model.init_args.teacher_checkpoint={tmp_path / 'teacher.pt'}",
        "--model.init_args.teacher.init_args.channels=[16, 32]",
        "--model.init_args.teacher.init_args.hidden=64",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=2",
        "--model.init_args.allow_teacher_data_overlap=true",
        "--trainer.logger=false",
    ]
    for name in ("digits_sparse90", "digits_channels"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            (REPO / "configs/compression" / f"{name}.yaml")
            .read_text()
            .replace("runs/digits/kd/best.ckpt", str(dense))
            .replace("every_n_epochs: 5", "every_n_epochs: 1, num_images: 1, faithfulness: false, surrogate: false")
        )
        main(["fit", "-c", str(config), f"--run_dir={tmp_path / name}", *common])
    best = tmp_path / "digits_channels" / "best.ckpt"
    assert torch.load(best, weights_only=True)["kdlight_pruned"]["student"]["layers.0.0"]["attrs"]["out_features"] == 16
    cli = main(
        [
            "test",
            "-c",
            str(tmp_path / "digits_channels.yaml"),
            f"--run_dir={tmp_path / 'digits_channels'}",
            "--ckpt_path=best",
            *common,
        ]
    )
    assert cli.model.student.layers[0][0].out_features == 16


@pytest.mark.slow
def test_results_script_quick_mode_writes_the_table(tmp_path):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import compression_results

    threads = torch.get_num_threads()
    try:
        out = compression_results.main(["--quick", "--out", str(tmp_path / "table.md")])
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    names = {row.split(" | ")[0].strip("| ") for row in rows[1:]}
    assert {"dense KD", "dense, fine-tuned", "sparse 50%", "sparse 90%", "channels -50%"} <= names
    dense_row = next(row for row in rows if row.startswith("| dense KD"))
    assert "1.000 | 1.000" in dense_row  # the dense student agrees with itself
