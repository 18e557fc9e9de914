"""Text inputs: every mismatch between the data's tokens and the models is one line before training."""

from __future__ import annotations

import pytest

from kdlight.cli import main

from conftest import REPO

CONFIG = REPO / "configs" / "text_shortcut" / "kd.yaml"
GIVEN = ["--model.init_args.teacher_checkpoint=null", "--model.init_args.teacher_as_given=true"]


def fit(tmp_path, *overrides: str) -> None:
    args = ["fit", "-c", str(CONFIG), f"--run_dir={tmp_path}/run", "--trainer.fast_dev_run=true"]
    main([*args, "--trainer.logger=false", *GIVEN, *overrides])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--model.init_args.student.init_args.vocab_size=200", "teacher and student have different vocabularies"),
        ("--model.init_args.student.init_args.max_length=10", "student accepts at most max_length=10 tokens"),
        ("--model.init_args.student.init_args.pad_token_id=3", "student pads with pad_token_id=3"),
        ("--data.init_args.max_length=40", "teacher accepts at most max_length=20 tokens but the data yields up to 40"),
        ("--model.init_args.student=kdlight.models.CNN1d", "student (CNN1d) is not a text model"),
        (
            "--trainer.callbacks=[{class_path: kdlight.explain.ExplanationAgreement, init_args: {methods: [grad_cam]}}]",
            "remove grad_cam from methods (methods for text inputs: saliency",
        ),
    ],
)
def test_mismatches_are_one_line_errors(tmp_path, capsys, override, expected):
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, "--trainer.callbacks=[]", override)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdlight: error: ") and expected in err[0], err


def test_a_matching_config_runs(tmp_path):
    fit(tmp_path, "--trainer.callbacks=[]")


def test_a_teacher_trained_on_another_vocabulary_is_refused(tmp_path, capsys):
    """The teacher's checkpoint records its tokenizer; a student run whose ids mean other tokens stops."""
    teacher = REPO / "configs" / "text_shortcut" / "teacher.yaml"
    run = tmp_path / "teacher"
    common = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    main(["fit", "-c", str(teacher), f"--run_dir={run}", "--data.init_args.tokenizer=char", *common])
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "-c",
                str(CONFIG),
                f"--run_dir={tmp_path}/student",
                "--trainer.fast_dev_run=true",
                "--trainer.callbacks=[]",
                f"--model.init_args.teacher_checkpoint={run}/best.ckpt",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained on the token ids of another vocabulary (char tokenizer" in err
