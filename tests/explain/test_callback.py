"""ExplanationAgreement inside fit, validate and test, its artifacts and its bad inputs."""
from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from conftest import digits_student, digits_teacher, tiny_trainer
from kdlight import ClassifierModule, DistillationModule
from kdlight.explain.callback import ExplanationAgreement

KEY = "val/explain/integrated_gradients/rank_correlation"


def make_module(teacher_checkpoint, student=None):
    return DistillationModule(
        digits_teacher(), student or digits_student(), teacher_checkpoint=str(teacher_checkpoint),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )


def small_callback(**kw):
    settings = dict(methods=["integrated_gradients", "saliency"], num_probes=32, batch_size=16, num_images=2)
    settings.update(kw)
    if "integrated_gradients" in settings["methods"]:
        settings.setdefault("method_args", {"integrated_gradients": {"n_steps": 8}})
    return ExplanationAgreement(**settings)


def test_fit_logs_every_metric_table_and_heatmap(digits, teacher_checkpoint, tmp_path):
    callback = small_callback()
    trainer = tiny_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    metrics = trainer.callback_metrics
    for method in ("integrated_gradients", "saliency"):
        for name in ("cosine", "rank_correlation", "pearson", "feature_agreement", "rank_agreement", "sign_agreement",
                     "signed_rank_agreement", "pairwise_rank_agreement", "student_deletion_auc", "teacher_insertion_auc",
                     "student_infidelity", "nonfinite"):
            assert f"val/explain/{method}/{name}" in metrics, (method, name)
    assert "val/explain/surrogate/fidelity" in metrics and "val/explain/prediction_agreement" in metrics
    assert -1.0 <= float(metrics[KEY]) <= 1.0
    files = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert any(f.startswith("val_explain_integrated_gradients_heatmaps") and f.endswith(".png") for f in files)
    assert any(f.startswith("val_explain_saliency_per_class") and f.endswith(".csv") for f in files)


def test_works_under_validate_and_test_inference_mode(digits, teacher_checkpoint):
    module = make_module(teacher_checkpoint)
    trainer = tiny_trainer(callbacks=[small_callback(log_images=False)])
    trainer.validate(module, datamodule=digits, verbose=False)
    assert KEY in trainer.callback_metrics
    trainer.test(module, datamodule=digits, verbose=False)
    assert "test/explain/saliency/cosine" in trainer.callback_metrics


def test_identical_student_agrees_perfectly_and_fresh_one_does_not(digits, teacher_checkpoint):
    module = make_module(teacher_checkpoint)
    clone = make_module(teacher_checkpoint, student=copy.deepcopy(module.teacher))
    results = {}
    for name, m in (("fresh", module), ("clone", clone)):
        callback = small_callback(log_images=False, faithfulness=False)
        tiny_trainer(callbacks=[callback]).validate(m, datamodule=digits, verbose=False)
        results[name] = callback.last_results
    assert results["clone"][KEY] == pytest.approx(1.0, abs=1e-5)
    assert results["clone"]["val/explain/saliency/cosine"] == pytest.approx(1.0, abs=1e-5)
    # saliency and cosine separate unrelated models; |IG| rank correlation is inflated by the
    # shared input support (zero pixels get zero attribution), which the chance level exposes
    assert results["fresh"]["val/explain/saliency/rank_correlation"] < 0.5
    assert results["fresh"]["val/explain/integrated_gradients/cosine"] < 0.5
    chance = results["clone"]["val/explain/integrated_gradients/chance_rank_correlation"]
    assert chance > 0.5 and results["fresh"][KEY] == pytest.approx(chance, abs=0.15)


def test_probe_set_is_fixed_and_bounded():
    callback = small_callback(num_probes=5)
    first = callback.probe_indices(100).clone()
    assert torch.equal(first, callback.probe_indices(100))
    assert torch.equal(first, small_callback(num_probes=5).probe_indices(100))
    with pytest.raises(ValueError, match=r"num_probes=50 is larger than the validation set \(10 samples\)"):
        small_callback(num_probes=50).probe_indices(10)


def test_too_many_probes_for_the_validation_set(digits, teacher_checkpoint):
    with pytest.raises(ValueError, match="larger than the validation set"):
        tiny_trainer(callbacks=[small_callback(num_probes=10_000)]).validate(make_module(teacher_checkpoint), datamodule=digits)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match=r"unknown attribution method\(s\) \['lime'\]; valid methods are: .*saliency"):
        ExplanationAgreement(methods=["lime"])
    with pytest.raises(ValueError, match="target must be one of teacher, label, student"):
        ExplanationAgreement(target="random")
    with pytest.raises(ValueError, match="not in methods"):
        ExplanationAgreement(methods=["saliency"], method_args={"grad_cam": {"layer": "conv2"}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        ExplanationAgreement(methods=["saliency"], method_args={"saliency": {"steps": 3}})


def test_grad_cam_layer_that_does_not_exist(digits, teacher_checkpoint):
    callback = small_callback(methods=["grad_cam"], method_args={"grad_cam": {"layer": "conv9"}})
    with pytest.raises(ValueError, match="conv9"):
        tiny_trainer(callbacks=[callback]).validate(make_module(teacher_checkpoint), datamodule=digits)


class NaNGradient(nn.Module):
    """Finite outputs, but d/dx of sqrt(|x_0|) at x_0 = 0 makes every input gradient NaN."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x) + 0.0 * x.flatten(1)[:, :1].abs().sqrt()


def test_nonfinite_attributions_are_skipped_counted_and_warned_once(digits, teacher_checkpoint):
    module = make_module(teacher_checkpoint, student=NaNGradient(digits_student()))
    callback = small_callback(methods=["saliency"], log_images=False, faithfulness=False)
    with pytest.warns(RuntimeWarning, match="NaN/infinite saliency attributions"):
        tiny_trainer(max_epochs=2, callbacks=[callback]).fit(module, datamodule=digits)
    assert callback.last_results["val/explain/saliency/nonfinite"] > 0


def test_needs_a_teacher_and_a_student(digits):
    module = ClassifierModule(digits_student())
    with pytest.raises(ValueError, match="needs a module with a teacher and a student"):
        tiny_trainer(callbacks=[small_callback()]).validate(module, datamodule=digits)


def test_bf16_mixed_precision_gives_float32_attributions(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], log_images=False)
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=2, precision="bf16-mixed", callbacks=[callback])
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    assert torch.isfinite(torch.tensor(callback.last_results["val/explain/saliency/rank_correlation"]))
