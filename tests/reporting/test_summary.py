"""FitSummary: the end-of-fit summary of the best epoch."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from kdlight import ClassifierModule, DistillationModule
from kdlight.analysis import load_run
from kdlight.explain import ExplanationAgreement
from kdlight.reporting.summary import FitSummary

from conftest import REPO, digits_student, digits_teacher, tiny_trainer

SMALL = dict(limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1)


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def test_summary_of_a_distillation_run(tmp_path, digits, capsys):
    summary = FitSummary()
    explain = ExplanationAgreement(
        methods=["saliency"], every_n_epochs=2, num_probes=8, faithfulness=False, surrogate=False, log_images=False
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best", monitor="val/acc", mode="max")
    trainer = tiny_trainer(
        max_epochs=3,
        enable_checkpointing=True,
        callbacks=[checkpoint, explain, summary],
        logger=CSVLogger(tmp_path, name="", version=""),
        **SMALL,
    )
    trainer.fit(
        DistillationModule(digits_teacher(), digits_student(), optimizer=_adam, teacher_as_given=True),
        datamodule=digits,
    )

    text = capsys.readouterr().out
    numbers = summary.summary
    run = load_run(tmp_path)  # cross-check against what the logger wrote
    best = run.best("val/acc")
    assert numbers["best_epoch"] == int(best["epoch"]) and numbers["best_value"] == pytest.approx(best["val/acc"])
    assert numbers["val/agreement"] == pytest.approx(best["val/agreement"])
    assert numbers["val/teacher_acc"] == pytest.approx(best["val/teacher_acc"])
    assert set(summary.explained) == {1, 2}  # every_n_epochs=2, and always the last epoch
    assert numbers["explain_epoch"] == min((1, 2), key=lambda e: (abs(e - numbers["best_epoch"]), -e))
    explained = run.epochs.set_index("epoch").loc[numbers["explain_epoch"]]
    assert numbers["explain"]["saliency/rank_correlation"] == pytest.approx(
        explained["val/explain/saliency/rank_correlation"]
    )
    assert numbers["best_checkpoint"] == checkpoint.best_model_path
    assert numbers["run_dir"] == str(tmp_path)
    assert text == summary.text + "\n"
    assert f"best val/acc          {best['val/acc']:.4f} at epoch {numbers['best_epoch']}" in text
    assert "top-1 agreement with the teacher" in text and "teacher acc" in text
    assert "saliency" in text and "chance level" in text
    assert str(checkpoint.best_model_path) in text and str(tmp_path) in text
    assert len(text.strip().splitlines()) <= 20  # one screen


def test_summary_of_a_classifier_run_without_checkpoints(tmp_path, digits, capsys):
    trainer = tiny_trainer(max_epochs=2, callbacks=[FitSummary()], default_root_dir=tmp_path, **SMALL)
    trainer.fit(ClassifierModule(digits_teacher(), optimizer=_adam), datamodule=digits)
    text = capsys.readouterr().out
    assert "best val/acc" in text and "of 2 validation epochs" in text
    assert "agreement" not in text and "explanations" not in text
    assert "none saved" in text and str(tmp_path) in text


def test_summary_without_validation_and_quiet(tmp_path, digits, capsys):
    summary = FitSummary(monitor="val/loss", mode="min", verbose=False)
    trainer = tiny_trainer(
        max_epochs=1, callbacks=[summary], default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=0
    )
    trainer.fit(ClassifierModule(digits_teacher(), optimizer=_adam), datamodule=digits)
    assert capsys.readouterr().out == ""
    assert "best val/loss" in summary.text and "n/a" in summary.text
    with pytest.raises(ValueError, match="mode must be"):
        FitSummary(mode="best")


def test_on_by_default_through_trainer_defaults(capsys):
    """The line proposed for kdlight/cli/__init__.py: FitSummary survives a config's own callback list."""
    from kdlight.cli import KDLightCLI

    KDLightCLI(
        args=[
            "fit",
            "-c",
            str(REPO / "configs" / "digits" / "scratch.yaml"),
            "--trainer.callbacks=[]",
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
        trainer_defaults={"callbacks": [FitSummary()]},
    )
    assert "-- kdlight fit summary" in capsys.readouterr().out


def test_methods_near_their_chance_level_are_flagged():
    summary = {
        "monitor": "val/acc",
        "mode": "max",
        "epochs_run": 20,
        "best_epoch": 8,
        "best_value": 0.95,
        "explain_epoch": 9,
        "explain": {
            "integrated_gradients/rank_correlation": 0.916,
            "integrated_gradients/chance_rank_correlation": 0.903,
            "saliency/rank_correlation": 0.135,
            "saliency/chance_rank_correlation": 0.008,
        },
        "best_checkpoint": None,
        "run_dir": None,
    }
    lines = FitSummary(verbose=False).format(summary).splitlines()
    (ig,) = [line for line in lines if line.strip().startswith("integrated_gradients")]
    (saliency,) = [line for line in lines if line.strip().startswith("saliency")]
    assert ig.endswith("<- near chance") and "(0.903)" in ig
    assert "near chance" not in saliency and "(0.008)" in saliency


def _explain(**kwargs) -> ExplanationAgreement:
    return ExplanationAgreement(
        methods=["saliency"], num_probes=8, faithfulness=False, surrogate=False, log_images=False, **kwargs
    )


def test_summary_names_the_last_epoch_when_every_n_epochs_exceeds_max_epochs(tmp_path, digits):
    summary = FitSummary(verbose=False)
    trainer = tiny_trainer(
        max_epochs=2, callbacks=[_explain(every_n_epochs=10), summary], default_root_dir=tmp_path, **SMALL
    )
    trainer.fit(
        DistillationModule(digits_teacher(), digits_student(), optimizer=_adam, teacher_as_given=True),
        datamodule=digits,
    )
    assert set(summary.explained) == {1} and summary.summary["explain_epoch"] == 1
    assert "explanations at epoch 1" in summary.text and "saliency" in summary.text


def test_summary_picks_up_the_explanation_of_a_fit_stopped_early(tmp_path, digits):
    """max_steps ends fit inside epoch 1, after the only validation (epoch 0): the final weights
    are explained at the end of training and the summary says they come from epoch 1."""
    summary = FitSummary(verbose=False)
    trainer = tiny_trainer(
        max_epochs=3, max_steps=3, callbacks=[_explain(every_n_epochs=10), summary], default_root_dir=tmp_path, **SMALL
    )
    trainer.fit(
        DistillationModule(digits_teacher(), digits_student(), optimizer=_adam, teacher_as_given=True),
        datamodule=digits,
    )
    numbers = summary.summary
    assert numbers["best_epoch"] == 0 and numbers["explain_epoch"] == 1
    assert "explanations at epoch 1, the nearest explained one" in summary.text


def test_summary_ignores_explanations_left_from_an_earlier_fit(tmp_path, digits):
    explain, summary = _explain(every_n_epochs=1), FitSummary(verbose=False)
    module = DistillationModule(digits_teacher(), digits_student(), optimizer=_adam, teacher_as_given=True)
    tiny_trainer(max_epochs=1, callbacks=[explain], default_root_dir=tmp_path, **SMALL).fit(module, datamodule=digits)
    assert explain.last_results  # left on the callback object
    no_explaining = {**SMALL, "limit_val_batches": 0}
    tiny_trainer(max_epochs=1, callbacks=[explain, summary], default_root_dir=tmp_path, **no_explaining).fit(
        module, datamodule=digits
    )
    assert summary.explained == {} and "explain_epoch" not in summary.summary
