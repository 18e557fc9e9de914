"""ExplanationAgreement inside fit, validate and test, its artifacts and its bad inputs."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from kdlight import ClassifierModule, DistillationModule
from kdlight.explain.callback import ExplanationAgreement

from conftest import digits_student, digits_teacher, tiny_trainer

KEY = "val/explain/integrated_gradients/rank_correlation"


def make_module(teacher_checkpoint, student=None, **kwargs):
    return DistillationModule(
        digits_teacher(),
        student or digits_student(),
        teacher_checkpoint=str(teacher_checkpoint),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        **kwargs,
    )


def small_callback(**kw):
    settings = dict(methods=["integrated_gradients", "saliency"], num_probes=32, batch_size=16, num_images=2)
    settings.update(kw)
    if "integrated_gradients" in settings["methods"]:
        settings.setdefault("method_args", {"integrated_gradients": {"n_steps": 8}})
    return ExplanationAgreement(**settings)


AGREEMENT = (
    "cosine",
    "rank_correlation",
    "pearson",
    "feature_agreement",
    "rank_agreement",
    "sign_agreement",
    "signed_rank_agreement",
    "pairwise_rank_agreement",
)
CHANCE = ("chance_cosine", "chance_rank_correlation", "chance_feature_agreement")
FAITHFULNESS = tuple(
    f"{role}_{score}" for role in ("teacher", "student") for score in ("deletion_auc", "insertion_auc", "infidelity")
)


def test_fit_logs_every_metric_table_and_heatmap(digits, teacher_checkpoint, tmp_path):
    callback = small_callback()
    trainer = tiny_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    expected = {
        f"val/explain/{method}/{name}"
        for method in ("integrated_gradients", "saliency")
        for name in (*AGREEMENT, *CHANCE, "nonfinite", *FAITHFULNESS)
    }
    expected |= {"val/explain/prediction_agreement", "val/explain/surrogate/fidelity", "val/explain/surrogate/leaves"}
    assert set(callback.last_results) == expected  # exactly these names, no more
    assert {k for k in trainer.callback_metrics if k.startswith("val/explain/")} == expected
    assert -1.0 <= callback.last_results[KEY] <= 1.0
    # the loggers get the exact (float64) values, in one row at the explained epoch's last step
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")), float_precision="round_trip")
    (row,) = rows.dropna(subset=[KEY]).to_dict("records")
    assert (row["epoch"], row["step"]) == (0, trainer.global_step)
    assert {k: row[k] for k in expected} == pytest.approx(callback.last_results, rel=0, abs=0, nan_ok=True)
    files = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    for method in ("integrated_gradients", "saliency"):  # drawn once, at the end of fit
        assert (
            f"val_explain_{method}_heatmaps_epoch000.png" in files
            and f"val_explain_{method}_per_class_epoch000.csv" in files
        )
    table = pd.read_csv(next((tmp_path / "run").rglob("val_explain_saliency_per_class_epoch000.csv")))
    assert list(table.columns) == ["class", "name", "mean", "count", "skipped"] and len(table) == 10
    assert table["count"].sum() + table["skipped"].sum() == 32  # every probe, in its class


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
        tiny_trainer(callbacks=[small_callback(num_probes=10_000)]).validate(
            make_module(teacher_checkpoint), datamodule=digits
        )


def test_bad_arguments_are_clear():
    with pytest.raises(
        ValueError,
        match=r"ExplanationAgreement methods: unknown attribution method 'salience' \(did you mean 'saliency'\?\); "
        "valid methods are: .*saliency",
    ):
        ExplanationAgreement(methods=["salience"])
    with pytest.raises(
        ValueError, match=r"ExplanationAgreement methods: cannot import attribution method 'my_pkg.Nope'"
    ):
        ExplanationAgreement(methods=["my_pkg.Nope"])
    with pytest.raises(ValueError, match="target must be one of teacher, label, student"):
        ExplanationAgreement(target="random")
    with pytest.raises(
        ValueError,
        match=r"ExplanationAgreement method_args: unknown attribution method 'gradcam' \(did you mean 'grad_cam'\?\); "
        "valid methods are: ",
    ):
        ExplanationAgreement(methods=["saliency"], method_args={"gradcam": {"layer": "conv2"}})
    # settings for a known method that is not selected are kept, so `--...methods=[saliency]` works on any config
    ExplanationAgreement(methods=["saliency"], method_args={"integrated_gradients": {"n_steps": 16}})
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


def test_explanation_cache_dir_is_read_by_later_runs_and_keyed_by_teacher(digits, teacher_checkpoint, tmp_path):
    cache = tmp_path / "teacher_explanations"
    module = make_module(teacher_checkpoint)
    reference = small_callback(log_images=False)
    tiny_trainer(callbacks=[reference]).validate(module, datamodule=digits, verbose=False)

    first = small_callback(log_images=False, explanation_cache_dir=str(cache))
    tiny_trainer(callbacks=[first]).validate(module, datamodule=digits, verbose=False)
    assert first.last_results == pytest.approx(reference.last_results, abs=1e-6, nan_ok=True)
    entries = sorted(cache.glob("*.pt"))
    assert [p.name.rsplit("_", 1)[0] for p in entries] == ["integrated_gradients", "saliency"]  # <method>_<key>.pt
    # doctor the stored teacher side: a later run that reads it logs what the file says
    for path in entries:
        entry = torch.load(path, weights_only=True)
        entry["maps"], entry["deletion_auc"] = -entry["maps"], torch.full_like(entry["deletion_auc"], 0.25)
        torch.save(entry, path)
    second = small_callback(log_images=False, explanation_cache_dir=str(cache))
    tiny_trainer(callbacks=[second]).validate(module, datamodule=digits, verbose=False)
    for method in ("integrated_gradients", "saliency"):
        key = f"val/explain/{method}"
        assert second.last_results[f"{key}/cosine"] == pytest.approx(-first.last_results[f"{key}/cosine"], abs=1e-6)
        assert second.last_results[f"{key}/teacher_deletion_auc"] == pytest.approx(0.25)
        assert second.last_results[f"{key}/student_deletion_auc"] == first.last_results[f"{key}/student_deletion_auc"]

    with torch.no_grad():  # another teacher: new entries, never the stored ones
        next(module.teacher.parameters()).mul_(0.5)
    third = small_callback(log_images=False, explanation_cache_dir=str(cache))
    tiny_trainer(callbacks=[third]).validate(module, datamodule=digits, verbose=False)
    assert len(list(cache.glob("*.pt"))) == 4
    assert third.last_results["val/explain/saliency/teacher_deletion_auc"] != pytest.approx(0.25)


def test_unreadable_teacher_cache_entry_is_recomputed_with_a_warning(digits, teacher_checkpoint, tmp_path):
    cache = tmp_path / "teacher_explanations"
    module = make_module(teacher_checkpoint)
    first = small_callback(methods=["saliency"], log_images=False, faithfulness=False, explanation_cache_dir=str(cache))
    tiny_trainer(callbacks=[first]).validate(module, datamodule=digits, verbose=False)
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(b"not a torch file")
    second = small_callback(
        methods=["saliency"], log_images=False, faithfulness=False, explanation_cache_dir=str(cache)
    )
    with pytest.warns(UserWarning, match="unreadable teacher explanation cache"):
        tiny_trainer(callbacks=[second]).validate(module, datamodule=digits, verbose=False)
    assert second.last_results == pytest.approx(first.last_results, nan_ok=True)
    torch.load(entry, weights_only=True)  # rewritten


def test_auto_explanation_cache_dir_lives_beside_the_teacher_checkpoint(digits, teacher_checkpoint, tmp_path):
    import shutil

    own_checkpoint = tmp_path / "teacher" / "best.ckpt"
    own_checkpoint.parent.mkdir()
    shutil.copy(teacher_checkpoint, own_checkpoint)
    module = make_module(own_checkpoint)
    callback = small_callback(methods=["saliency"], log_images=False, explanation_cache_dir="auto")
    tiny_trainer(callbacks=[callback]).validate(module, datamodule=digits, verbose=False)
    assert len(list((tmp_path / "teacher" / "explanations").glob("saliency_*.pt"))) == 1
    unloaded = DistillationModule(
        digits_teacher(), digits_student(), optimizer=lambda p: torch.optim.Adam(p), teacher_as_given=True
    )
    callback = small_callback(methods=["saliency"], log_images=False, explanation_cache_dir="auto")
    tiny_trainer(callbacks=[callback]).validate(unloaded, datamodule=digits, verbose=False)
    assert len(list(tmp_path.rglob("*.pt"))) == 1  # a teacher not loaded from a file: memory only


def test_unwritable_explanation_cache_dir_warns_and_goes_on(digits, teacher_checkpoint, tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should be")
    callback = small_callback(
        methods=["saliency"], log_images=False, faithfulness=False, explanation_cache_dir=str(blocker / "cache")
    )
    with pytest.warns(UserWarning, match="could not write the teacher explanation cache"):
        tiny_trainer(callbacks=[callback]).validate(make_module(teacher_checkpoint), datamodule=digits, verbose=False)
    assert "val/explain/saliency/cosine" in callback.last_results


def test_validate_returns_and_fit_logs_the_explanation_metrics(digits, teacher_checkpoint, tmp_path):
    module = make_module(teacher_checkpoint)
    returned = tiny_trainer(callbacks=[small_callback(log_images=False)]).validate(
        module, datamodule=digits, verbose=False
    )
    assert KEY in returned[0]  # trainer.validate's results (and the printed table) hold them
    trainer = tiny_trainer(
        max_epochs=1, callbacks=[small_callback(log_images=False)], logger=CSVLogger(tmp_path, name="run")
    )
    trainer.fit(module, datamodule=digits)
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    logged = rows.dropna(subset=[KEY])
    assert list(logged["epoch"]) == [0] and float(logged[KEY].iloc[0]) == pytest.approx(
        float(trainer.callback_metrics[KEY])
    )


def test_one_callback_object_reused_for_another_teacher_forgets_the_first(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], log_images=False, faithfulness=False)
    first = make_module(teacher_checkpoint)
    tiny_trainer(callbacks=[callback]).validate(first, datamodule=digits, verbose=False)
    other = DistillationModule(
        digits_teacher(), first.student, optimizer=lambda p: torch.optim.Adam(p), teacher_as_given=True
    )  # untrained teacher
    tiny_trainer(callbacks=[callback]).validate(other, datamodule=digits, verbose=False)
    fresh = small_callback(methods=["saliency"], log_images=False, faithfulness=False)
    tiny_trainer(callbacks=[fresh]).validate(other, datamodule=digits, verbose=False)
    assert callback.last_results == pytest.approx(fresh.last_results, nan_ok=True)


def test_one_callback_object_reused_for_other_probes_recomputes_the_teacher_side(teacher_checkpoint):
    from kdlight.data import DigitsDataModule

    module = make_module(teacher_checkpoint, allow_teacher_data_overlap=True)  # the other split overlaps the teacher's
    callback = small_callback(methods=["saliency"], log_images=False)
    tiny_trainer(callbacks=[callback]).validate(
        module, datamodule=DigitsDataModule(batch_size=64, seed=0), verbose=False
    )
    other_data = DigitsDataModule(batch_size=64, seed=1)  # another split: other probes
    tiny_trainer(callbacks=[callback]).validate(module, datamodule=other_data, verbose=False)
    fresh = small_callback(methods=["saliency"], log_images=False)
    tiny_trainer(callbacks=[fresh]).validate(module, datamodule=other_data, verbose=False)
    assert callback.last_results == pytest.approx(fresh.last_results, nan_ok=True)


def test_explanation_cache_key_covers_the_probe_batch_size(digits, teacher_checkpoint, tmp_path):
    """Random methods draw per probe batch, so another batch size is another entry."""
    module = make_module(teacher_checkpoint)
    for batch_size in (16, 8):
        callback = small_callback(
            methods=["gradient_shap"],
            log_images=False,
            faithfulness=False,
            batch_size=batch_size,
            explanation_cache_dir=str(tmp_path),
        )
        tiny_trainer(callbacks=[callback]).validate(module, datamodule=digits, verbose=False)
    assert len(list(tmp_path.glob("gradient_shap_*.pt"))) == 2


def test_too_many_probes_fail_when_fit_starts(digits, teacher_checkpoint):
    seen = []
    trainer = tiny_trainer(max_epochs=3, callbacks=[small_callback(num_probes=10_000)])
    module = make_module(teacher_checkpoint)
    module.on_train_epoch_start = lambda: seen.append(1)
    with pytest.raises(ValueError, match="larger than the validation set"):
        trainer.fit(module, datamodule=digits)
    assert not seen  # before the first training epoch, not after it


# --------------------------------------------------------------------------------------------
# settings are checked at setup, before any training step


class CountBatches(Callback):
    """Counts the training batches that started."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1


def _fit_fails_before_training(callback, teacher_checkpoint, datamodule, match: str, **fit_kwargs) -> str:
    """Fit for 3 epochs (explained every 2): the error must come before the first training batch."""
    counter = CountBatches()
    trainer = tiny_trainer(max_epochs=3, limit_train_batches=2, callbacks=[counter, callback])
    with pytest.raises(ValueError, match=match) as info:
        trainer.fit(make_module(teacher_checkpoint), datamodule=datamodule, **fit_kwargs)
    assert trainer.global_step == 0 and counter.batches == 0
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_grad_cam_layer_fails_at_setup_naming_model_layers_and_option(digits, teacher_checkpoint):
    callback = small_callback(methods=["grad_cam"], every_n_epochs=2, method_args={"grad_cam": {"layer": "conv9"}})
    message = _fit_fails_before_training(
        callback, teacher_checkpoint, digits, "the teacher \\(CNN2d\\) has no layer 'conv9'"
    )
    assert "close names: conv2, conv1" in message
    assert "method_args: {grad_cam: {layer: <name>}} (or teacher_layer: <name> for the teacher alone)" in message


def test_grad_cam_layer_missing_in_the_student_only(digits, teacher_checkpoint):
    callback = small_callback(
        methods=["grad_cam"],
        every_n_epochs=2,
        method_args={"grad_cam": {"teacher_layer": "conv2", "student_layer": "features"}},
    )
    message = _fit_fails_before_training(
        callback, teacher_checkpoint, digits, "the student \\(CNN2d\\) has no layer 'features'"
    )
    assert (
        "its conv layers: conv1.0, conv2.0" in message and "method_args: {grad_cam: {student_layer: <name>}}" in message
    )


def test_grad_cam_layer_without_spatial_output_fails_at_setup(digits, teacher_checkpoint):
    callback = small_callback(
        methods=["grad_cam"], every_n_epochs=2, method_args={"grad_cam": {"student_layer": "classifier"}}
    )
    message = _fit_fails_before_training(callback, teacher_checkpoint, digits, "layer 'classifier' of the student")
    assert "outputs of shape [10], not maps like the inputs [1, 8, 8]" in message
    assert "method_args: {grad_cam: {student_layer: <name>}}" in message


def test_k_larger_than_the_number_of_features_fails_at_setup(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], k=65, every_n_epochs=2)
    message = _fit_fails_before_training(callback, teacher_checkpoint, digits, "k=65 exceeds the 64 features")
    assert "set k <= 64" in message
    tiny_trainer(callbacks=[small_callback(methods=["saliency"], k=64, log_images=False)]).validate(
        make_module(teacher_checkpoint), datamodule=digits, verbose=False
    )  # k = number of features is allowed


class PlainData(LightningDataModule):
    """The digits loaders behind a datamodule that knows neither ``input_shape`` nor ``train_inputs()``."""

    def __init__(self, digits) -> None:
        super().__init__()
        self.digits = digits

    def train_dataloader(self):
        return self.digits.train_dataloader()

    def val_dataloader(self):
        return self.digits.val_dataloader()


class DictSamples(torch.utils.data.Dataset):
    """A dataset whose samples are dicts with the batch field names."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        inputs, target, *_ = self.dataset[index]
        return {"inputs": inputs, "target": target}


class DictData(PlainData):
    """The digits validation samples as dicts."""

    def val_dataloader(self):
        from kdlight.core.batch import collate

        dataset = DictSamples(self.digits.val_dataloader().dataset)
        return torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=collate)


def test_probes_may_be_dict_samples(digits, teacher_checkpoint):
    module = make_module(teacher_checkpoint)
    results = []
    for data in (PlainData(digits), DictData(digits)):
        callback = small_callback(methods=["saliency"], log_images=False)
        tiny_trainer(callbacks=[callback]).validate(module, datamodule=data, verbose=False)
        results.append(callback.last_results)
    assert results[0] == pytest.approx(results[1], rel=0, abs=0, nan_ok=True) and results[0]


def test_k_too_large_is_refused_when_only_the_data_know_the_input_shape(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], k=100, every_n_epochs=2)
    message = _fit_fails_before_training(
        callback,
        teacher_checkpoint,
        PlainData(digits),
        re.escape("k=100 exceeds the 64 features of an input of shape [1, 8, 8]"),
    )
    assert "set k <= 64" in message


def test_mean_baseline_without_training_inputs_fails_at_setup(digits, teacher_checkpoint):
    callback = small_callback(
        methods=["integrated_gradients"],
        every_n_epochs=2,
        method_args={"integrated_gradients": {"n_steps": 8, "baseline": "mean"}},
    )
    message = _fit_fails_before_training(
        callback,
        teacher_checkpoint,
        PlainData(digits),
        "baseline 'mean' needs the training inputs, but the data \\(PlainData\\)",
    )
    assert "method_args: {integrated_gradients: {baseline: zeros}}" in message


def test_settings_that_need_no_model_fail_on_construction():
    with pytest.raises(
        ValueError,
        match="method_args for integrated_gradients: AttributionConfig.n_steps must be an integer >= 1, got 0",
    ):
        ExplanationAgreement(methods=["integrated_gradients"], method_args={"integrated_gradients": {"n_steps": 0}})
    with pytest.raises(ValueError, match="noise_tunnel is not supported for kernel_shap"):
        ExplanationAgreement(methods=["kernel_shap"], method_args={"kernel_shap": {"noise_tunnel": "smoothgrad"}})
    with pytest.raises(ValueError, match="only grad_cam explains a layer; remove it"):
        ExplanationAgreement(methods=["saliency"], method_args={"saliency": {"layer": "conv2"}})
    with pytest.raises(
        ValueError,
        match="unknown option\\(s\\) \\['steps'\\] for grad_cam in method_args; valid: .*student_layer, teacher_layer",
    ):
        ExplanationAgreement(methods=["grad_cam"], method_args={"grad_cam": {"steps": 3}})
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        ExplanationAgreement(k=0)


@pytest.mark.parametrize(
    "shape, patch_size, match",
    [
        (
            (3, 32, 32),
            None,
            "its 1024 positions are more than the 256 features allowed without patches; "
            "set method_args: {kernel_shap: {patch_size: 2}}",
        ),
        (
            (3, 8, 8),
            9,
            "patch_size=9 is larger than the input's 8x8 positions; set method_args: {kernel_shap: {patch_size: 1}}",
        ),
    ],
)
def test_perturbation_patches_that_do_not_fit_the_inputs(teacher_checkpoint, shape, patch_size, match):
    from types import SimpleNamespace

    callback = small_callback(methods=["kernel_shap"], method_args={"kernel_shap": {"patch_size": patch_size}})
    with pytest.raises(ValueError, match=re.escape(match)):
        callback.check_settings(SimpleNamespace(datamodule=None), make_module(teacher_checkpoint), shape)


def test_grad_cam_needs_spatial_inputs(teacher_checkpoint):
    from types import SimpleNamespace

    with pytest.raises(
        ValueError,
        match=re.escape(
            "ExplanationAgreement grad_cam explains image, signal inputs, these are tabular [F] inputs of shape [30]; "
            "remove grad_cam from methods"
        ),
    ):
        small_callback(methods=["grad_cam"]).check_settings(
            SimpleNamespace(datamodule=None), make_module(teacher_checkpoint), (30,)
        )
    # the data module's modality decides, not the inputs' rank
    from kdlight.core.modality import Tabular

    with pytest.raises(ValueError, match=re.escape("these are tabular [F] inputs of shape [1, 8, 8]")):
        small_callback(methods=["grad_cam"]).check_settings(
            SimpleNamespace(datamodule=SimpleNamespace(modality=Tabular())), make_module(teacher_checkpoint), (1, 8, 8)
        )


# --------------------------------------------------------------------------------------------
# the last epoch of fit is always explained


def test_last_epoch_is_explained_when_every_n_epochs_exceeds_max_epochs(digits, teacher_checkpoint, tmp_path):
    callback = small_callback(
        methods=["saliency"], every_n_epochs=10, log_images=False, faithfulness=False, surrogate=False
    )
    trainer = tiny_trainer(
        max_epochs=2, limit_train_batches=2, callbacks=[callback], logger=CSVLogger(tmp_path, name="run")
    )
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    key = "val/explain/saliency/rank_correlation"
    logged = rows.dropna(subset=[key])
    assert list(logged["epoch"]) == [1] and callback.last_epoch == 1
    assert (
        "val/acc" in rows.dropna(subset=["val/acc"]).set_index("epoch").loc[1]
    )  # logged beside that epoch's validation


def test_fit_stopped_early_explains_its_final_weights(digits, teacher_checkpoint, tmp_path):
    """max_steps ends fit inside epoch 1, before its validation: explained at the end of training."""
    callback = small_callback(
        methods=["saliency"], every_n_epochs=10, log_images=False, faithfulness=False, surrogate=False
    )
    trainer = tiny_trainer(
        max_epochs=3, max_steps=3, limit_train_batches=2, callbacks=[callback], logger=CSVLogger(tmp_path, name="run")
    )
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    logged = rows.dropna(subset=["val/explain/saliency/cosine"])
    assert list(logged["epoch"]) == [1] and list(logged["step"]) == [3]
    assert callback.last_epoch == 1 and "val/explain/saliency/cosine" in trainer.callback_metrics


# --------------------------------------------------------------------------------------------
# methods and metrics from the registries, localisation, stability, profiler actions


def test_a_method_named_by_class_path_logs_what_its_registered_name_does(digits, teacher_checkpoint):
    path = "kdlight.explain.attribution.gradient.Saliency"
    callback = small_callback(methods=["saliency", path], log_images=False, faithfulness=False, surrogate=False)
    tiny_trainer(callbacks=[callback]).validate(make_module(teacher_checkpoint), datamodule=digits, verbose=False)
    by_name = {
        k.split("/", 3)[-1]: v for k, v in callback.last_results.items() if k.startswith("val/explain/saliency/")
    }
    by_path = {k.split("/", 3)[-1]: v for k, v in callback.last_results.items() if k.startswith(f"val/explain/{path}/")}
    assert by_path == by_name and set(by_name) == {*AGREEMENT, *CHANCE, "nonfinite"}


def test_metrics_option_logs_the_chosen_metrics_and_their_chance_twins(digits, teacher_checkpoint):
    full = small_callback(methods=["saliency"], log_images=False, faithfulness=False, surrogate=False)
    chosen = small_callback(
        methods=["saliency"], log_images=False, faithfulness=False, surrogate=False, metrics=["pearson", "cosine"]
    )
    module = make_module(teacher_checkpoint)
    for callback in (full, chosen):
        tiny_trainer(callbacks=[callback]).validate(module, datamodule=digits, verbose=False)
    key = "val/explain/saliency/"
    names = {k.removeprefix(key) for k in chosen.last_results if k.startswith(key)}
    assert names == {"pearson", "cosine", "chance_cosine", "nonfinite"}  # only cosine has a chance level of the two
    assert {k: chosen.last_results[key + k] for k in names} == {k: full.last_results[key + k] for k in names}
    with pytest.raises(
        ValueError,
        match="ExplanationAgreement metrics: 'localisation_mass' compares mask, not two models' maps; valid: cosine, ",
    ):
        ExplanationAgreement(metrics=["localisation_mass"])
    with pytest.raises(ValueError, match="ExplanationAgreement metrics: unknown metric 'cosin'; valid names: "):
        ExplanationAgreement(metrics=["cosin"])


def test_localisation_on_the_shortcut_cue_equals_relevance_mass_of_the_same_maps(teacher_checkpoint):
    from kdlight.data.shortcut import ShortcutDigitsDataModule
    from kdlight.explain.attribution import AttributionConfig, attribute
    from kdlight.explain.metrics.localisation import relevance_mass, top_k_hit_rate

    data = ShortcutDigitsDataModule(batch_size=64, seed=0)
    module = make_module(teacher_checkpoint)
    callback = small_callback(methods=["saliency"], num_probes=2, log_images=False, faithfulness=False, surrogate=False)
    tiny_trainer(max_epochs=1, limit_train_batches=3, callbacks=[callback]).fit(module, datamodule=data)
    x_val, _ = data.split_tensors("val")
    indices = callback.probe_indices(len(x_val))
    x, masks = x_val[indices], data.ground_truth_masks("val", indices)
    assert masks.sum() == 2  # one cue pixel per probe
    with torch.no_grad():
        target = module.teacher.eval()(x).argmax(-1)
    config = AttributionConfig(method="saliency")
    for role in ("teacher", "student"):
        maps = attribute(getattr(module, role), x, target, config, modality=data.modality)
        mass = callback.last_results[f"val/explain/saliency/{role}_localisation_mass"]
        topk = callback.last_results[f"val/explain/saliency/{role}_localisation_topk"]
        assert 0.0 <= mass <= 1.0 and 0.0 <= topk <= 1.0
        assert mass == pytest.approx(float(relevance_mass(maps, masks).mean()), rel=1e-6)
        assert topk == pytest.approx(float(top_k_hit_rate(maps, masks, k=8).mean()), rel=1e-6)


def test_no_localisation_without_ground_truth(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], log_images=False, faithfulness=False, surrogate=False)
    tiny_trainer(callbacks=[callback]).validate(make_module(teacher_checkpoint), datamodule=digits, verbose=False)
    assert not [k for k in callback.last_results if "localisation" in k]


def test_stability_of_a_linear_student_and_the_same_noise_for_both_models(digits, teacher_checkpoint):
    stability = {"noise_scale": 0.05, "n_samples": 3}
    settings = dict(methods=["saliency"], num_probes=8, log_images=False, faithfulness=False, surrogate=False)
    linear = make_module(teacher_checkpoint, student=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    callback = small_callback(stability=stability, **settings)
    tiny_trainer(callbacks=[callback]).validate(linear, datamodule=digits, verbose=False)
    results = {k.rsplit("/", 1)[-1]: v for k, v in callback.last_results.items()}
    # a linear model's gradient does not depend on its input: its saliency never moves
    assert results["student_sensitivity_max"] == 0.0 and results["student_self_agreement"] == pytest.approx(1.0)
    assert results["teacher_sensitivity_max"] > 0.0 and -1.0 <= results["teacher_self_agreement"] <= 1.0
    top_k = small_callback(stability={**stability, "agreement": "feature_agreement"}, **settings)  # takes k
    tiny_trainer(callbacks=[top_k]).validate(linear, datamodule=digits, verbose=False)
    assert top_k.last_results["val/explain/saliency/student_self_agreement"] == 1.0
    # teacher and student see the same noise: a student identical to the teacher scores the same
    clone = make_module(teacher_checkpoint, student=digits_teacher())
    clone.student.load_state_dict(clone.teacher.state_dict())
    callback = small_callback(stability=stability, **settings)
    tiny_trainer(callbacks=[callback]).validate(clone, datamodule=digits, verbose=False)
    for name in ("sensitivity_max", "self_agreement"):
        key = f"val/explain/saliency/{{}}_{name}"
        assert callback.last_results[key.format("teacher")] == callback.last_results[key.format("student")]
    assert callback.last_results["val/explain/saliency/teacher_sensitivity_max"] == results["teacher_sensitivity_max"]


def test_stability_settings_are_checked_on_construction():
    with pytest.raises(ValueError, match=r"unknown stability option\(s\) \['noise'\]; valid: noise_scale, n_samples"):
        ExplanationAgreement(stability={"noise": 0.1})
    with pytest.raises(ValueError, match="stability n_samples must be an integer >= 1, got 0"):
        ExplanationAgreement(stability={"n_samples": 0})
    with pytest.raises(ValueError, match="stability agreement 'top1_agreement' compares logits, not two maps"):
        ExplanationAgreement(stability={"agreement": "top1_agreement"})


def test_the_parts_of_a_run_are_reported_to_the_trainers_profiler(digits, teacher_checkpoint):
    from lightning.pytorch.profilers import Profiler

    class Actions(Profiler):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def start(self, action_name: str) -> None:
            self.names.add(action_name)

        def stop(self, action_name: str) -> None:
            pass

    profiler = Actions()
    tiny_trainer(profiler=profiler, callbacks=[small_callback(methods=["saliency"], log_images=False)]).validate(
        make_module(teacher_checkpoint), datamodule=digits, verbose=False
    )
    parts = ("teacher_side", "attribution", "chance_level", "faithfulness", "surrogate")
    assert {f"kdlight.explain.{part}" for part in parts} <= profiler.names


# --------------------------------------------------------------------------------------------
# names and imports


def test_the_old_cache_option_name_is_refused_naming_the_new_one(capsys, tmp_path):
    """teacher_cache_dir was renamed explanation_cache_dir (DistillationModule's teacher_cache
    holds logits); teacher_in_background was removed."""
    from kdlight.cli import main

    from conftest import REPO

    config = tmp_path / "old.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: kdlight.explain.ExplanationAgreement\n"
        "      init_args: {methods: [saliency], teacher_cache_dir: auto}\n"
    )
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(REPO / "configs/digits/scratch.yaml"), "-c", str(config), "--trainer.fast_dev_run=true"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "takes no argument 'teacher_cache_dir'; did you mean 'explanation_cache_dir'?" in line
    with pytest.raises(TypeError, match="teacher_in_background"):
        ExplanationAgreement(teacher_in_background=False)


def test_explain_package_imports_the_callback_on_first_use():
    import kdlight.explain as explain
    from kdlight.explain import callback

    assert explain.ExplanationAgreement is callback.ExplanationAgreement
    assert all(getattr(explain, name) is not None for name in explain.__all__)
    code = (
        "import sys, kdlight.explain, kdlight.explain.attribution; kdlight.explain.attribute; kdlight.explain.get_method; "
        "kdlight.explain.metric_names(); "
        "print(sorted(n for n in ('lightning', 'pandas', 'kdlight.explain.callback') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # attribution stays light: no Lightning, pandas or callback
