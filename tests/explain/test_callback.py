"""ExplanationAgreement inside fit, validate and test, its artifacts and its bad inputs."""
from __future__ import annotations

import copy
import os
import re
import sys
import threading

import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from conftest import digits_student, digits_teacher, tiny_trainer
from kdlight import ClassifierModule, DistillationModule
from kdlight.explain.callback import ExplanationAgreement

KEY = "val/explain/integrated_gradients/rank_correlation"


def make_module(teacher_checkpoint, student=None, **kwargs):
    return DistillationModule(
        digits_teacher(), student or digits_student(), teacher_checkpoint=str(teacher_checkpoint),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **kwargs,
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
    with pytest.raises(ValueError, match="'gradcam', which is not an attribution method; valid methods are: .*grad_cam"):
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


def _teacher_attribution_calls(monkeypatch, module):
    """Count attribution calls made on the teacher (the student's are not counted)."""
    import kdlight.explain.callback as callback_module

    calls, real = [], callback_module.attribute

    def counting(model, *args, **kwargs):
        if model is module.teacher:
            calls.append(1)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(callback_module, "attribute", counting)
    return calls


def test_teacher_cache_dir_is_reused_across_runs_and_keyed_by_teacher(digits, teacher_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "teacher_explanations"
    module = make_module(teacher_checkpoint)
    reference = small_callback(log_images=False)
    tiny_trainer(callbacks=[reference]).validate(module, datamodule=digits, verbose=False)

    calls = _teacher_attribution_calls(monkeypatch, module)
    first = small_callback(log_images=False, teacher_cache_dir=str(cache))
    tiny_trainer(callbacks=[first]).validate(module, datamodule=digits, verbose=False)
    computed = len(calls)
    assert computed > 0 and len(list(cache.glob("*.pt"))) == 2  # one entry per method
    second = small_callback(log_images=False, teacher_cache_dir=str(cache))
    tiny_trainer(callbacks=[second]).validate(module, datamodule=digits, verbose=False)
    assert len(calls) == computed  # the second run read the teacher's side from disk
    for results in (first.last_results, second.last_results):
        for key, value in reference.last_results.items():
            assert results[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key

    with torch.no_grad():  # another teacher: new entries, never the stored ones
        next(module.teacher.parameters()).mul_(0.5)
    third = small_callback(log_images=False, teacher_cache_dir=str(cache))
    tiny_trainer(callbacks=[third]).validate(module, datamodule=digits, verbose=False)
    assert len(calls) > computed and len(list(cache.glob("*.pt"))) == 4


def test_unreadable_teacher_cache_entry_is_recomputed_with_a_warning(digits, teacher_checkpoint, tmp_path):
    cache = tmp_path / "teacher_explanations"
    module = make_module(teacher_checkpoint)
    first = small_callback(methods=["saliency"], log_images=False, faithfulness=False, teacher_cache_dir=str(cache))
    tiny_trainer(callbacks=[first]).validate(module, datamodule=digits, verbose=False)
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(b"not a torch file")
    second = small_callback(methods=["saliency"], log_images=False, faithfulness=False, teacher_cache_dir=str(cache))
    with pytest.warns(UserWarning, match="unreadable teacher explanation cache"):
        tiny_trainer(callbacks=[second]).validate(module, datamodule=digits, verbose=False)
    assert second.last_results == pytest.approx(first.last_results, nan_ok=True)
    torch.load(entry, weights_only=True)  # rewritten


def test_auto_teacher_cache_dir_lives_beside_the_teacher_checkpoint(digits, teacher_checkpoint, tmp_path):
    import shutil

    own_checkpoint = tmp_path / "teacher" / "best.ckpt"
    own_checkpoint.parent.mkdir()
    shutil.copy(teacher_checkpoint, own_checkpoint)
    module = make_module(own_checkpoint)
    callback = small_callback(methods=["saliency"], log_images=False, teacher_cache_dir="auto")
    tiny_trainer(callbacks=[callback]).validate(module, datamodule=digits, verbose=False)
    assert len(list((tmp_path / "teacher" / "explanations").glob("saliency_*.pt"))) == 1
    unloaded = DistillationModule(digits_teacher(), digits_student(), optimizer=lambda p: torch.optim.Adam(p), teacher_as_given=True)
    callback = small_callback(methods=["saliency"], log_images=False, teacher_cache_dir="auto")
    tiny_trainer(callbacks=[callback]).validate(unloaded, datamodule=digits, verbose=False)
    assert callback._cache_dir is None  # a teacher not loaded from a file: memory only


def test_unwritable_teacher_cache_dir_warns_and_goes_on(digits, teacher_checkpoint, tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should be")
    callback = small_callback(methods=["saliency"], log_images=False, faithfulness=False, teacher_cache_dir=str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write the teacher explanation cache"):
        tiny_trainer(callbacks=[callback]).validate(make_module(teacher_checkpoint), datamodule=digits, verbose=False)
    assert "val/explain/saliency/cosine" in callback.last_results


def test_validate_returns_and_fit_logs_the_explanation_metrics(digits, teacher_checkpoint, tmp_path):
    module = make_module(teacher_checkpoint)
    returned = tiny_trainer(callbacks=[small_callback(log_images=False)]).validate(module, datamodule=digits, verbose=False)
    assert KEY in returned[0]  # trainer.validate's results (and the printed table) hold them
    trainer = tiny_trainer(max_epochs=1, callbacks=[small_callback(log_images=False)], logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(module, datamodule=digits)
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    logged = rows.dropna(subset=[KEY])
    assert list(logged["epoch"]) == [0] and float(logged[KEY].iloc[0]) == pytest.approx(float(trainer.callback_metrics[KEY]))


def test_one_callback_object_reused_for_another_teacher_forgets_the_first(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], log_images=False, faithfulness=False)
    first = make_module(teacher_checkpoint)
    tiny_trainer(callbacks=[callback]).validate(first, datamodule=digits, verbose=False)
    other = DistillationModule(digits_teacher(), first.student, optimizer=lambda p: torch.optim.Adam(p), teacher_as_given=True)  # untrained teacher
    tiny_trainer(callbacks=[callback]).validate(other, datamodule=digits, verbose=False)
    fresh = small_callback(methods=["saliency"], log_images=False, faithfulness=False)
    tiny_trainer(callbacks=[fresh]).validate(other, datamodule=digits, verbose=False)
    assert callback.last_results == pytest.approx(fresh.last_results, nan_ok=True)


def test_one_callback_object_reused_for_other_probes_recomputes_the_teacher_side(teacher_checkpoint):
    from kdlight.data import DigitsDataModule

    module = make_module(teacher_checkpoint, allow_teacher_data_overlap=True)  # the other split overlaps the teacher's
    callback = small_callback(methods=["saliency"], log_images=False)
    tiny_trainer(callbacks=[callback]).validate(module, datamodule=DigitsDataModule(batch_size=64, seed=0), verbose=False)
    other_data = DigitsDataModule(batch_size=64, seed=1)  # another split: other probes
    tiny_trainer(callbacks=[callback]).validate(module, datamodule=other_data, verbose=False)
    fresh = small_callback(methods=["saliency"], log_images=False)
    tiny_trainer(callbacks=[fresh]).validate(module, datamodule=other_data, verbose=False)
    assert callback.last_results == pytest.approx(fresh.last_results, nan_ok=True)


def test_teacher_cache_key_covers_the_probe_batch_size(digits, teacher_checkpoint, tmp_path):
    """Random methods draw per probe batch, so another batch size is another entry."""
    module = make_module(teacher_checkpoint)
    for batch_size in (16, 8):
        callback = small_callback(methods=["gradient_shap"], log_images=False, faithfulness=False, batch_size=batch_size,
                                  teacher_cache_dir=str(tmp_path))
        tiny_trainer(callbacks=[callback]).validate(module, datamodule=digits, verbose=False)
    assert len(list(tmp_path.glob("gradient_shap_*.pt"))) == 2


# --------------------------------------------------------------------------------------------
# the teacher's side on a background thread during fit


def _threads_computing_teacher_side(monkeypatch, callback) -> dict[str, set[str]]:
    """Per method, the names of the threads that computed the teacher's maps and faithfulness."""
    threads: dict[str, set[str]] = {}
    real = callback._completed

    def spy(entry, method, *args, **kwargs):
        threads.setdefault(method, set()).add(threading.current_thread().name)
        return real(entry, method, *args, **kwargs)

    monkeypatch.setattr(callback, "_completed", spy)
    return threads


def test_teacher_side_of_pure_methods_is_computed_in_the_background(digits, teacher_checkpoint, monkeypatch):
    callback = small_callback(methods=["integrated_gradients", "saliency", "gradient_shap"], log_images=False,
                              method_args={"integrated_gradients": {"n_steps": 8}, "gradient_shap": {"n_samples": 4}})
    threads = _threads_computing_teacher_side(monkeypatch, callback)
    tiny_trainer(max_epochs=1, limit_train_batches=3, callbacks=[callback]).fit(make_module(teacher_checkpoint), datamodule=digits)
    main = threading.main_thread().name
    for method in ("integrated_gradients", "saliency"):  # no random draws, no hooks: beside training
        assert len(threads[method]) == 1 and threads[method] != {main}, threads
    assert threads["gradient_shap"] == {main}  # draws random numbers: in the run, as before
    assert "val/explain/integrated_gradients/teacher_deletion_auc" in callback.last_results


def test_background_teacher_side_leaves_training_and_results_unchanged(digits, teacher_checkpoint):
    """Same student weights, same global RNG state and same explanation metrics with the teacher's
    side computed beside training or in the run; the student's dropout draws random numbers."""
    from lightning.pytorch import seed_everything

    outcomes = []
    for background in (True, False):
        seed_everything(0, verbose=False)
        student = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
        module = make_module(teacher_checkpoint, student=student)
        callback = small_callback(log_images=False, teacher_in_background=background)
        tiny_trainer(max_epochs=2, callbacks=[callback]).fit(module, datamodule=digits)
        outcomes.append((module.student.state_dict(), torch.get_rng_state(), callback.last_results))
    (weights, rng, results), (weights_fg, rng_fg, results_fg) = outcomes
    assert all(torch.equal(weights[name], weights_fg[name]) for name in weights)
    assert torch.equal(rng, rng_fg)
    assert results == pytest.approx(results_fg, abs=1e-6, nan_ok=True)


def test_failed_background_job_is_logged_and_the_run_computes_the_teacher_side(digits, teacher_checkpoint, monkeypatch, caplog):
    callback = small_callback(methods=["saliency"], log_images=False)

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(callback, "_teacher_sides", broken)
    with caplog.at_level("INFO", logger="kdlight.explain.callback"):
        tiny_trainer(max_epochs=1, limit_train_batches=2, callbacks=[callback]).fit(make_module(teacher_checkpoint), datamodule=digits)
    assert "broken on purpose" in caplog.text
    assert "val/explain/saliency/teacher_insertion_auc" in callback.last_results


def test_background_job_overlaps_training(digits, teacher_checkpoint, monkeypatch):
    """The job is still pending when training batches run (it waits for one before finishing)."""
    from lightning.pytorch import Callback

    batch_done = threading.Event()

    class BatchSignal(Callback):
        def on_train_batch_end(self, *args):
            batch_done.set()

    callback = small_callback(methods=["saliency"], log_images=False)
    threads = _threads_computing_teacher_side(monkeypatch, callback)
    real = callback._teacher_sides

    def after_a_training_batch(*args):
        assert batch_done.wait(timeout=20), "no training batch ran while the job was pending"
        return real(*args)

    monkeypatch.setattr(callback, "_teacher_sides", after_a_training_batch)
    tiny_trainer(max_epochs=1, limit_train_batches=3, callbacks=[BatchSignal(), callback]).fit(make_module(teacher_checkpoint), datamodule=digits)
    assert threads["saliency"] != {threading.main_thread().name}


def test_background_job_never_relaxes_the_deterministic_flag(digits, teacher_checkpoint, monkeypatch):
    """The flag is process-wide: flipping it on the job's thread would relax training too."""
    calls_off_main = []
    real = torch.use_deterministic_algorithms

    def spy(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            calls_off_main.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "use_deterministic_algorithms", spy)
    callback = small_callback(log_images=False)
    threads = _threads_computing_teacher_side(monkeypatch, callback)
    tiny_trainer(max_epochs=1, limit_train_batches=3, callbacks=[callback]).fit(make_module(teacher_checkpoint), datamodule=digits)
    assert threads["integrated_gradients"] != {threading.main_thread().name}
    assert calls_off_main == []


def test_no_background_job_when_no_run_comes(digits, teacher_checkpoint, monkeypatch):
    """No validation, no explanation: the teacher's side is not computed either."""
    callback = small_callback(methods=["saliency"], log_images=False, every_n_epochs=5)
    started = []
    monkeypatch.setattr(callback, "_teacher_sides", lambda *args: started.append(1))
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    assert started == [] and callback.last_results == {}


def test_background_only_where_it_is_safe():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    cpu = torch.device("cpu")
    single = SimpleNamespace(strategy=SingleDeviceStrategy(device=cpu))
    callback = small_callback(methods=["integrated_gradients", "saliency", "gradient_shap", "grad_cam"],
                              method_args={"saliency": {"noise_tunnel": "smoothgrad"}})
    assert callback._background_methods(single, cpu) == ["integrated_gradients"]  # pure methods only
    assert callback._background_methods(SimpleNamespace(strategy=DDPStrategy()), cpu) == ["integrated_gradients"]

    class ShardingStrategy(DDPStrategy):  # e.g. FSDP or DeepSpeed: the teacher may be sharded
        pass

    assert callback._background_methods(SimpleNamespace(strategy=ShardingStrategy()), cpu) == []
    assert callback._background_methods(single, torch.device("meta")) == []
    assert small_callback(target="student")._background_methods(single, cpu) == []
    assert small_callback(teacher_in_background=False)._background_methods(single, cpu) == []


def test_too_many_probes_fail_when_fit_starts(digits, teacher_checkpoint):
    seen = []
    trainer = tiny_trainer(max_epochs=3, callbacks=[small_callback(num_probes=10_000)])
    module = make_module(teacher_checkpoint)
    module.on_train_epoch_start = lambda: seen.append(1)
    with pytest.raises(ValueError, match="larger than the validation set"):
        trainer.fit(module, datamodule=digits)
    assert not seen  # before the first training epoch, not after it


@pytest.mark.parametrize("objective", ["hint", "grad_cam_matching"])
def test_background_job_ignores_the_objective_s_hooks_on_the_teacher(objective, digits, teacher_checkpoint, monkeypatch):
    """Hint taps the teacher's conv2 for the whole fit; Grad-CAM matching hooks it inside each step.
    The job explains a hook-free copy, so training sees only its own activations: the same weights
    with the job as without it."""
    from lightning.pytorch import seed_everything

    from kdlight.objectives import KD, Composite, ExplanationMatching, Hint

    weights = []
    for background in (True, False):
        seed_everything(0, verbose=False)
        extra = Hint(student_layer="conv2", teacher_layer="conv2") if objective == "hint" else ExplanationMatching("grad_cam")
        module = DistillationModule(
            digits_teacher(), digits_student(), teacher_checkpoint=str(teacher_checkpoint),
            objective=Composite([KD(), extra]), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        )
        callback = small_callback(methods=["integrated_gradients", "saliency"], log_images=False, teacher_in_background=background)
        threads = _threads_computing_teacher_side(monkeypatch, callback)
        tiny_trainer(max_epochs=2, limit_train_batches=6, callbacks=[callback]).fit(module, datamodule=digits)
        assert (threads["saliency"] != {threading.main_thread().name}) is background
        weights.append(module.student.state_dict())
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
def test_background_job_runs_at_the_lowest_cpu_priority(digits, teacher_checkpoint, monkeypatch):
    callback = small_callback(methods=["saliency"], log_images=False)
    priorities = []
    real = callback._completed

    def spy(*args, **kwargs):
        priorities.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real(*args, **kwargs)

    monkeypatch.setattr(callback, "_completed", spy)
    tiny_trainer(max_epochs=1, limit_train_batches=2, callbacks=[callback]).fit(make_module(teacher_checkpoint), datamodule=digits)
    ((name, priority),) = priorities
    assert name != threading.main_thread().name and priority == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19  # the main thread keeps its own


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
    message = _fit_fails_before_training(callback, teacher_checkpoint, digits, "the teacher \\(CNN2d\\) has no layer 'conv9'")
    assert "close names: conv2, conv1" in message
    assert "method_args: {grad_cam: {layer: <name>}} (or teacher_layer: <name> for the teacher alone)" in message


def test_grad_cam_layer_missing_in_the_student_only(digits, teacher_checkpoint):
    callback = small_callback(methods=["grad_cam"], every_n_epochs=2,
                              method_args={"grad_cam": {"teacher_layer": "conv2", "student_layer": "features"}})
    message = _fit_fails_before_training(callback, teacher_checkpoint, digits, "the student \\(CNN2d\\) has no layer 'features'")
    assert "its conv layers: conv1.0, conv2.0" in message and "method_args: {grad_cam: {student_layer: <name>}}" in message


def test_grad_cam_layer_without_spatial_output_fails_at_setup(digits, teacher_checkpoint):
    callback = small_callback(methods=["grad_cam"], every_n_epochs=2, method_args={"grad_cam": {"student_layer": "classifier"}})
    message = _fit_fails_before_training(callback, teacher_checkpoint, digits, "layer 'classifier' of the student")
    assert "outputs of shape [10], not maps like the inputs [1, 8, 8]" in message
    assert "method_args: {grad_cam: {student_layer: <name>}}" in message


def test_k_larger_than_the_number_of_features_fails_at_setup(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], k=65, every_n_epochs=2)
    message = _fit_fails_before_training(callback, teacher_checkpoint, digits, "k=65 exceeds the 64 features")
    assert "set k <= 64" in message
    tiny_trainer(callbacks=[small_callback(methods=["saliency"], k=64, log_images=False)]).validate(
        make_module(teacher_checkpoint), datamodule=digits, verbose=False)  # k = number of features is allowed


class PlainData(LightningDataModule):
    """The digits loaders behind a datamodule that knows neither ``input_shape`` nor ``train_inputs()``."""

    def __init__(self, digits) -> None:
        super().__init__()
        self.digits = digits

    def train_dataloader(self):
        return self.digits.train_dataloader()

    def val_dataloader(self):
        return self.digits.val_dataloader()


def test_k_too_large_is_refused_when_only_the_data_know_the_input_shape(digits, teacher_checkpoint):
    callback = small_callback(methods=["saliency"], k=100, every_n_epochs=2)
    message = _fit_fails_before_training(callback, teacher_checkpoint, PlainData(digits),
                                         re.escape("k=100 exceeds the 64 features of an input of shape [1, 8, 8]"))
    assert "set k <= 64" in message


def test_mean_baseline_without_training_inputs_fails_at_setup(digits, teacher_checkpoint):
    callback = small_callback(methods=["integrated_gradients"], every_n_epochs=2,
                              method_args={"integrated_gradients": {"n_steps": 8, "baseline": "mean"}})
    message = _fit_fails_before_training(callback, teacher_checkpoint, PlainData(digits),
                                         "baseline 'mean' needs the training inputs, but the data \\(PlainData\\)")
    assert "method_args: {integrated_gradients: {baseline: zeros}}" in message


def test_too_many_probes_fail_when_fit_starts_without_background_methods(digits, teacher_checkpoint):
    callback = small_callback(methods=["gradient_shap"], num_probes=10_000, every_n_epochs=2)
    _fit_fails_before_training(callback, teacher_checkpoint, digits, "num_probes=10000 is larger than the validation set")


def test_settings_that_need_no_model_fail_on_construction():
    with pytest.raises(ValueError, match="method_args for integrated_gradients: AttributionConfig.n_steps must be an integer >= 1, got 0"):
        ExplanationAgreement(methods=["integrated_gradients"], method_args={"integrated_gradients": {"n_steps": 0}})
    with pytest.raises(ValueError, match="noise_tunnel is not supported for kernel_shap"):
        ExplanationAgreement(methods=["kernel_shap"], method_args={"kernel_shap": {"noise_tunnel": "smoothgrad"}})
    with pytest.raises(ValueError, match="only grad_cam explains a layer; remove it"):
        ExplanationAgreement(methods=["saliency"], method_args={"saliency": {"layer": "conv2"}})
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['steps'\\] for grad_cam in method_args; valid: .*student_layer, teacher_layer"):
        ExplanationAgreement(methods=["grad_cam"], method_args={"grad_cam": {"steps": 3}})
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        ExplanationAgreement(k=0)


@pytest.mark.parametrize("shape, patch_size, match", [
    ((3, 32, 32), None, "its 1024 positions are more than the 256 features allowed without patches; "
                        "set method_args: {kernel_shap: {patch_size: 2}}"),
    ((3, 8, 8), 9, "patch_size=9 is larger than the input's 8x8 positions; set method_args: {kernel_shap: {patch_size: 1}}"),
])
def test_perturbation_patches_that_do_not_fit_the_inputs(teacher_checkpoint, shape, patch_size, match):
    from types import SimpleNamespace

    callback = small_callback(methods=["kernel_shap"], method_args={"kernel_shap": {"patch_size": patch_size}})
    with pytest.raises(ValueError, match=re.escape(match)):
        callback.check_settings(SimpleNamespace(datamodule=None), make_module(teacher_checkpoint), shape)


def test_grad_cam_needs_spatial_inputs(teacher_checkpoint):
    from types import SimpleNamespace

    with pytest.raises(ValueError, match=re.escape("grad_cam needs image [C, H, W] or 1-D signal [C, L] inputs, these are [30]")):
        small_callback(methods=["grad_cam"]).check_settings(SimpleNamespace(datamodule=None), make_module(teacher_checkpoint), (30,))


# --------------------------------------------------------------------------------------------
# the last epoch of fit is always explained


def test_last_epoch_is_explained_when_every_n_epochs_exceeds_max_epochs(digits, teacher_checkpoint, tmp_path):
    callback = small_callback(methods=["saliency"], every_n_epochs=10, log_images=False, faithfulness=False, surrogate=False)
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=2, callbacks=[callback], logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    key = "val/explain/saliency/rank_correlation"
    logged = rows.dropna(subset=[key])
    assert list(logged["epoch"]) == [1] and callback.last_epoch == 1
    assert "val/acc" in rows.dropna(subset=["val/acc"]).set_index("epoch").loc[1]  # logged beside that epoch's validation


def test_fit_stopped_early_explains_its_final_weights(digits, teacher_checkpoint, tmp_path):
    """max_steps ends fit inside epoch 1, before its validation: explained at the end of training."""
    callback = small_callback(methods=["saliency"], every_n_epochs=10, log_images=False, faithfulness=False, surrogate=False)
    trainer = tiny_trainer(max_epochs=3, max_steps=3, limit_train_batches=2, callbacks=[callback],
                           logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(make_module(teacher_checkpoint), datamodule=digits)
    rows = pd.read_csv(next((tmp_path / "run").rglob("metrics.csv")))
    logged = rows.dropna(subset=["val/explain/saliency/cosine"])
    assert list(logged["epoch"]) == [1] and list(logged["step"]) == [3]
    assert callback.last_epoch == 1 and "val/explain/saliency/cosine" in trainer.callback_metrics
