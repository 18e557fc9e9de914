"""Int8 post-training quantisation and quantisation-aware distillation (torchao)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from kdlight import DistillationModule
from kdlight.compression.measure import size_on_disk
from kdlight.compression.quantization import (
    INT8_MODES,
    QuantizationAwareTraining,
    compare_predictions,
    load_int8,
    quantize_int8,
    save_int8,
)
from kdlight.models import MLP, CNN2d, FastText
from kdlight.objectives import KD, Composite, Hint

from conftest import tiny_trainer


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def int8_error_bound(weight: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Worst-case ``|y_int8 - y_float|`` of ``x @ weight.T`` per output: symmetric per-channel int8
    weights round each weight by at most half a step ``max|w_row| / 127``; asymmetric per-row int8
    activations (``dynamic``) move each input by at most one step ``(max(x, 0) - min(x, 0)) / 255``
    (half a step of rounding plus half a step of zero-point rounding)."""
    weight_err = weight.abs().amax(1) / 127 / 2  # [out]
    if mode == "weight_only":
        return x.abs().sum(1, keepdim=True) * weight_err
    x_err = (x.clamp(min=0).amax(1) - x.clamp(max=0).amin(1)) / 255  # [N]
    x_hat = x.abs() + x_err[:, None]
    return x_err[:, None] * weight.abs().sum(1) + x_hat.sum(1, keepdim=True) * weight_err


@pytest.mark.parametrize("mode", INT8_MODES)
def test_int8_linear_is_within_the_int8_rounding_bound_and_the_float_model_stays(mode):
    layer = nn.Linear(48, 16)
    x = torch.randn(32, 48)
    float_out = layer(x).detach()
    quantized = quantize_int8(layer, mode)
    q_out = quantized(x).detach()
    error = (q_out - float_out).abs()
    assert error.max() > 0  # it was quantised
    assert (error <= int8_error_bound(layer.weight.detach(), x, mode) + 1e-5).all()
    assert torch.equal(layer(x), float_out)  # a copy: the float layer is untouched


def test_int8_model_is_smaller_on_disk_and_predicts_like_the_float_model():
    model = MLP(in_features=64, num_classes=10, hidden=[256])
    x = torch.randn(256, 64)
    quantized = quantize_int8(model, "dynamic")
    # 1 byte per weight instead of 4, plus one float scale per output row
    assert size_on_disk(quantized) < 0.5 * size_on_disk(model)
    batches = [{"inputs": x, "target": model(x).argmax(-1)}]
    result = compare_predictions(model, quantized, batches)
    assert result["reference_accuracy"] == 1.0
    assert result["agreement"] == result["accuracy"] >= 0.95


def test_compare_predictions_reports_the_largest_logit_difference():
    model = MLP(in_features=8, num_classes=3, hidden=[4])
    shifted = MLP(in_features=8, num_classes=3, hidden=[4])
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        shifted.classifier.bias[1] += 0.25  # every logit of class 1 moves by exactly 0.25, nothing else
    batches = [{"inputs": torch.randn(16, 8)}, {"inputs": torch.randn(5, 8)}]
    assert compare_predictions(model, model, batches)["max_logit_difference"] == 0.0
    assert compare_predictions(model, shifted, batches)["max_logit_difference"] == pytest.approx(0.25, abs=1e-6)


def test_only_linear_layers_are_quantised_and_conv_layers_keep_float_weights():
    model = CNN2d(in_channels=1, num_classes=10, channels=[4, 8], hidden=16)
    quantized = quantize_int8(model, "weight_only")
    conv_weights = [m.weight for m in quantized.modules() if isinstance(m, nn.Conv2d)]
    assert conv_weights and all(type(w) is nn.Parameter for w in conv_weights)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(quantized(x), model(x), atol=0.05)


def test_a_text_model_quantises_its_linear_layers_and_keeps_integer_inputs():
    model = FastText(vocab_size=50, num_classes=3, embed_dim=16, hidden=8, pad_token_id=0)
    ids = torch.randint(1, 50, (6, 12))
    ids[:, 9:] = 0
    quantized = quantize_int8(model, "dynamic")
    assert torch.allclose(quantized(ids), model(ids), atol=0.05)


def test_saved_int8_model_reloads_weights_only_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = MLP(in_features=20, num_classes=4, hidden=[32])
    quantized = quantize_int8(model, "dynamic")
    path = save_int8(quantized, tmp_path / "student_int8.pt")
    reloaded = load_int8(MLP(in_features=20, num_classes=4, hidden=[32]), path, "dynamic")
    x = torch.randn(8, 20)
    assert torch.equal(reloaded(x), quantized(x))


def test_a_model_without_linear_layers_is_one_clear_line():
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no nn.Linear layer") as info:
        quantize_int8(model)
    assert "\n" not in str(info.value) and "Conv1d" in str(info.value)


def test_unknown_mode_and_bad_start_epoch_are_one_line_each():
    with pytest.raises(ValueError, match=r"choose one of \['dynamic', 'weight_only'\]"):
        quantize_int8(nn.Linear(2, 2), "int4")
    with pytest.raises(ValueError, match="start_epoch must be an integer >= 0"):
        QuantizationAwareTraining(start_epoch=-1)
    with pytest.raises(ValueError, match=r"choose one of \('int8', 'fake_quant', None\)"):
        QuantizationAwareTraining(evaluate_as="int4")


class RecordOutputs(Callback):
    """The student's logits on fixed inputs at the end of the fit (still fake-quantised then)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.logits = x, None

    def on_fit_end(self, trainer, pl_module) -> None:
        with torch.no_grad():
            self.logits = pl_module.student.eval()(self.x)


def test_qat_distillation_trains_leaves_the_teacher_bit_identical_and_converts_to_what_it_simulated(digits, tmp_path):
    class EpochLoss(Callback):
        """Mean training loss of each epoch, from the loss every step returns."""

        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.steps: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps.append(float(outputs["loss"]))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.losses.append(sum(self.steps) / len(self.steps))

    teacher, student = MLP(64, 10, [32]), MLP(64, 10, [16])
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule(teacher, student, objective=KD(alpha=0.5), optimizer=adam, teacher_as_given=True)
    record, epochs = RecordOutputs(torch.randn(16, 64)), EpochLoss()
    trainer = tiny_trainer(
        max_epochs=4,
        limit_train_batches=6,
        limit_val_batches=1,
        callbacks=[QuantizationAwareTraining(), record, epochs],
    )
    trainer.fit(module, datamodule=digits)
    assert epochs.losses[-1] < 0.8 * epochs.losses[0]  # fake-quantised from epoch 0 and still learning
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(type(p) is nn.Parameter for p in teacher.parameters())
    # converted at the end: the int8 student computes what the fake-quantised one did
    with torch.no_grad():
        converted = student.eval()(record.x)
    assert type(student.classifier.weight) is not nn.Parameter
    assert torch.allclose(converted, record.logits, atol=1e-4)
    path = save_int8(student, tmp_path / "int8.pt")
    reloaded = load_int8(MLP(64, 10, [16]), path)
    assert torch.equal(reloaded(record.x), converted)


def test_testing_the_fits_checkpoint_after_conversion_evaluates_its_int8_student(digits, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    student = MLP(64, 10, [16])
    module = DistillationModule(MLP(64, 10, [32]), student, optimizer=adam, teacher_as_given=True)
    callbacks = [QuantizationAwareTraining(mode="weight_only"), ModelCheckpoint(dirpath=tmp_path, filename="last")]
    trainer = tiny_trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        limit_test_batches=1,
        callbacks=callbacks,
        enable_checkpointing=True,
    )
    trainer.fit(module, datamodule=digits)
    trainer.test(module, datamodule=digits, ckpt_path=str(tmp_path / "last.ckpt"))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    float_student = MLP(64, 10, [16])
    float_student.load_state_dict({k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")})
    x = torch.randn(8, 64)
    assert torch.equal(student(x), quantize_int8(float_student, "weight_only")(x))
    assert "test/acc" in trainer.callback_metrics


def test_explanation_callback_explains_the_fake_quantised_student_at_test_time(digits):
    from kdlight.explain import ExplanationAgreement

    student = MLP(64, 10, [16])
    module = DistillationModule(MLP(64, 10, [32]), student, optimizer=adam, teacher_as_given=True)
    qat = QuantizationAwareTraining(convert_at_end=False, evaluate_as="fake_quant")
    explain = ExplanationAgreement(methods=["saliency"], every_n_epochs=1, num_probes=16, log_images=False)
    trainer = tiny_trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=1, limit_test_batches=1, callbacks=[qat, explain]
    )
    trainer.fit(module, datamodule=digits)
    trainer.test(module, datamodule=digits)
    assert any(name.startswith("test/explain/saliency/") for name in trainer.callback_metrics)
    x = torch.randn(8, 64)
    with torch.no_grad():
        simulated = student(x)
    assert torch.allclose(qat.convert(module)(x), simulated, atol=1e-4)  # what the int8 model computes


def test_feature_taps_on_a_quantised_layer_keep_working(digits):
    """Hint reads the student's ``classifier`` (a Linear swapped for a fake-quantised one at epoch 1)."""
    objective = Composite([KD(), Hint(student_layer="classifier", teacher_layer="classifier", weight=1.0)])
    module = DistillationModule(MLP(64, 10, [32]), MLP(64, 10, [16]), objective, optimizer=adam, teacher_as_given=True)
    trainer = tiny_trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[QuantizationAwareTraining(start_epoch=1)]
    )
    trainer.fit(module, datamodule=digits)
    assert trainer.current_epoch == 2 and torch.isfinite(trainer.callback_metrics["train/loss_hint_epoch"])


def test_a_student_without_linear_layers_fails_at_setup_in_one_line(digits):
    class ConvOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 8)

        def forward(self, x):
            return self.conv(x).flatten(1)

    module = DistillationModule(MLP(64, 10, [8]), ConvOnly(), optimizer=adam, teacher_as_given=True)
    with pytest.raises(ValueError, match="ConvOnly has no nn.Linear layer") as info:
        tiny_trainer(max_steps=1, callbacks=[QuantizationAwareTraining()]).fit(module, datamodule=digits)
    assert "\n" not in str(info.value)


CLI_CONFIG = """
seed_everything: 0
trainer:
  max_epochs: 2
  limit_train_batches: 3
  limit_val_batches: 1
  limit_test_batches: 2
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: last, enable_version_counter: false}
    - class_path: kdlight.compression.quantization.QuantizationAwareTraining
      init_args: {start_epoch: 1, mode: dynamic}
data:
  class_path: kdlight.data.DigitsDataModule
  init_args: {batch_size: 64, seed: 0}
model:
  class_path: kdlight.DistillationModule
  init_args:
    teacher_as_given: true
    teacher: {class_path: kdlight.models.MLP, init_args: {in_features: 64, num_classes: 10, hidden: [32]}}
    student: {class_path: kdlight.models.MLP, init_args: {in_features: 64, num_classes: 10, hidden: [16]}}
"""


@pytest.mark.slow
def test_qat_checkpoint_is_float_and_kdlight_test_evaluates_the_int8_student(tmp_path):
    from kdlight.cli import main

    config = tmp_path / "qat.yaml"
    config.write_text(CLI_CONFIG)
    main(["fit", "-c", str(config), f"--run_dir={tmp_path / 'run'}"])
    ckpt = tmp_path / "run" / "version_0" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    student = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    float_student = MLP(64, 10, [16])
    float_student.load_state_dict(student)  # same keys as the float model, plain tensors
    cli = main(["test", "-c", str(config), f"--run_dir={tmp_path / 'run'}", f"--ckpt_path={ckpt}"])
    assert type(cli.model.student.classifier.weight) is not nn.Parameter  # int8 at test time
    x = torch.randn(8, 64)
    expected = quantize_int8(float_student, "dynamic")(x)
    assert torch.equal(cli.model.student(x), expected)
    assert 0.0 <= float(cli.trainer.callback_metrics["test/acc"]) <= 1.0


@pytest.mark.parametrize("start_epoch", [0, 1])
def test_qat_hands_explanation_preservation_the_float_student_before_fake_quantising(digits, start_epoch):
    from kdlight.objectives.preservation import ExplanationPreservation

    class FloatWeightsAtSwap(Callback):
        """The student's float weights at the start of the epoch QAT starts (listed before QAT)."""

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == start_epoch:
                self.state = {k: v.clone() for k, v in pl_module.student.state_dict().items()}

    preserve = ExplanationPreservation(reference="dense_student", weight=0.1)
    module = DistillationModule(
        MLP(64, 10, [32]),
        MLP(64, 10, [16]),
        objective=Composite([KD(alpha=0.5), preserve]),
        optimizer=adam,
        teacher_as_given=True,
    )
    at_swap = FloatWeightsAtSwap()
    qat = QuantizationAwareTraining(start_epoch=start_epoch, convert_at_end=False)
    tiny_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[at_swap, qat]).fit(
        module, datamodule=digits
    )
    reference = preserve.reference_model
    linears = [m for m in reference.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)  # float layers, not FakeQuantizedLinear
    assert all(torch.equal(v, at_swap.state[k]) for k, v in reference.state_dict().items())
