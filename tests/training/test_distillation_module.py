"""DistillationModule: frozen teacher, optimizer contents, logging, metrics, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn

from kdlight import DistillationModule
from kdlight.core.errors import NonFiniteLossError
from kdlight.core.step import LossTerm
from kdlight.objectives import KD, AttentionTransfer, Composite, CrossEntropy, Hint, Objective

from conftest import digits_student, digits_teacher, tiny_trainer


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class TeacherModeRecorder(Callback):
    """Records the teacher's training flag at every train batch."""

    def __init__(self) -> None:
        self.flags: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flags.append(pl_module.teacher.training or any(m.training for m in pl_module.teacher.modules()))


def test_teacher_is_bit_identical_and_in_eval_mode_after_fit(digits, teacher_checkpoint):
    module = DistillationModule(
        digits_teacher(), digits_student(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
    )
    before = snapshot(module.teacher)  # parameters and BatchNorm buffers
    recorder = TeacherModeRecorder()
    tiny_trainer(max_epochs=2, callbacks=[recorder]).fit(module, datamodule=digits)
    after = module.teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert recorder.flags and not any(recorder.flags)  # eval at every step, also after validation
    module.train()
    assert not any(m.training for m in module.teacher.modules())
    assert module.student.training
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_student_learns_while_teacher_does_not(digits, teacher_checkpoint):
    module = DistillationModule(
        digits_teacher(), digits_student(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
    )
    student_before = snapshot(module.student)
    tiny_trainer(max_epochs=1).fit(module, datamodule=digits)
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert changed
    assert all(p.grad is None for p in module.teacher.parameters())


def test_optimizer_holds_student_and_regressor_but_never_the_teacher(digits):
    objective = Composite([KD(), Hint(student_layer="conv2", teacher_layer="conv2")])
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=objective, optimizer=adam, teacher_as_given=True
    )
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(module, datamodule=digits)
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    expected = {id(p) for p in module.student.parameters()} | {id(p) for p in objective.parameters()}
    assert in_optimizer == expected
    assert any(True for _ in objective.parameters())  # the regressor exists and is trained
    assert not in_optimizer & {id(p) for p in module.teacher.parameters()}


def test_every_term_is_logged_and_total_is_weighted_sum(digits):
    objective = Composite([KD(temperature=2.0, alpha=0.7), AttentionTransfer(["conv2"], ["conv2"], weight=10.0)])
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=objective, optimizer=adam, teacher_as_given=True
    )
    trainer = tiny_trainer(max_steps=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=digits)
    metrics = trainer.callback_metrics
    for name in (
        "train/loss",
        "train/loss_kd",
        "train/loss_ce",
        "train/loss_at",
        "train/loss_epoch",
        "train/loss_kd_epoch",
    ):
        assert name in metrics, name
    expected = 0.3 * metrics["train/loss_ce"] + 0.7 * metrics["train/loss_kd"] + 10.0 * metrics["train/loss_at"]
    assert torch.allclose(metrics["train/loss"], expected, rtol=1e-5)


def test_validation_metrics_match_manual_computation(digits, teacher_checkpoint):
    module = DistillationModule(
        digits_teacher(), digits_student(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
    )
    trainer = tiny_trainer()
    trainer.validate(module, datamodule=digits, verbose=False)
    x, y = digits.split_tensors("val")
    module.eval()
    with torch.no_grad():
        s, t = module.student(x), module.teacher(x)
    m = trainer.callback_metrics
    assert m["val/acc"].item() == pytest.approx((s.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert m["val/teacher_acc"].item() == pytest.approx((t.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert m["val/agreement"].item() == pytest.approx((s.argmax(1) == t.argmax(1)).float().mean().item(), abs=1e-6)
    kl = F.kl_div(s.log_softmax(1), t.log_softmax(1), reduction="batchmean", log_target=True)
    assert m["val/kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert m["val/teacher_acc"] > 0.5  # the trained teacher really was loaded (chance is 0.1)


def test_output_size_mismatch_names_both_sizes(digits):
    from kdlight.models import MLP

    module = DistillationModule(
        digits_teacher(), MLP(in_features=64, num_classes=7, hidden=[8]), optimizer=adam, teacher_as_given=True
    )
    with pytest.raises(ValueError, match="teacher outputs 10 classes but student outputs 7"):
        tiny_trainer(max_steps=1).fit(module, datamodule=digits)


def test_unknown_layer_lists_available_names(digits):
    module = DistillationModule(
        digits_teacher(),
        digits_student(),
        objective=Hint(student_layer="layer9", teacher_layer="conv2"),
        optimizer=adam,
        teacher_as_given=True,
    )
    with pytest.raises(ValueError, match=r"student has no submodule 'layer9'; valid names are: .*conv1"):
        tiny_trainer(max_steps=1).fit(module, datamodule=digits)


class NaNObjective(Objective):
    def forward(self, step):
        return [
            LossTerm("ce", F.cross_entropy(step.student_logits, step.target)),
            LossTerm("boom", step.student_logits.sum() * float("nan")),
        ]


def test_nan_loss_stops_training_naming_the_term(digits):
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=NaNObjective(), optimizer=adam, teacher_as_given=True
    )
    with pytest.raises(NonFiniteLossError, match=r"loss term boom=nan at epoch 0, step 0"):
        tiny_trainer(max_steps=3, log_every_n_steps=1).fit(module, datamodule=digits)


def test_nan_between_logging_steps_is_caught_at_the_next_one(digits):
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=NaNObjective(), optimizer=adam, teacher_as_given=True
    )
    with pytest.raises(NonFiniteLossError, match=r"loss term .*boom=nan at epoch 0, steps 0-4"):
        tiny_trainer(max_steps=8, log_every_n_steps=5).fit(module, datamodule=digits)


def test_train_accuracy_and_f1_from_the_confusion_matrix():
    from torchmetrics.functional.classification import multiclass_f1_score

    from kdlight.training.base import accuracy_and_macro_f1

    target = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    preds = torch.tensor([0, 1, 1, 1, 2, 0, 2, 1])
    confusion = torch.bincount(target * 4 + preds, minlength=16).view(4, 4)
    accuracy, f1 = accuracy_and_macro_f1(confusion)
    assert accuracy.item() == pytest.approx(5 / 8)
    assert f1.item() == pytest.approx(multiclass_f1_score(preds, target, 4, average="macro").item())


def test_same_instance_for_teacher_and_student_is_refused():
    model = digits_teacher()
    with pytest.raises(ValueError, match="two different module instances"):
        DistillationModule(model, model)


def test_hint_regressor_is_saved_and_restored(digits, tmp_path):
    objective = Hint(student_layer="conv2", teacher_layer="conv2")
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=objective, optimizer=adam, teacher_as_given=True
    )
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(module, datamodule=digits)
    path = tmp_path / "distilled.ckpt"
    trainer.save_checkpoint(path)
    restored = DistillationModule.load_from_checkpoint(
        path,
        teacher=digits_teacher(),
        student=digits_student(),
        objective=Hint(student_layer="conv2", teacher_layer="conv2"),
        weights_only=False,
    )
    for key, value in module.objective.state_dict().items():
        assert torch.equal(restored.objective.state_dict()[key], value)


def test_cross_entropy_only_objective_needs_no_teacher_signal(digits):
    module = DistillationModule(
        digits_teacher(), digits_student(), objective=CrossEntropy(), optimizer=adam, teacher_as_given=True
    )
    trainer = tiny_trainer(max_steps=2, log_every_n_steps=1)
    trainer.fit(module, datamodule=digits)
    assert "train/loss_ce" in trainer.callback_metrics and "train/loss_kd" not in trainer.callback_metrics


def _eval_mode_warnings(module, digits) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(module, datamodule=digits)
    return [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]


def test_frozen_teacher_does_not_trip_lightning_s_eval_mode_warning(digits):
    adam = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    assert (
        _eval_mode_warnings(
            DistillationModule(digits_teacher(), digits_student(), optimizer=adam, teacher_as_given=True), digits
        )
        == []
    )
    student = digits_student()
    student.conv1.eval()  # a student module left in eval mode is a real problem: still warned
    student.train = lambda mode=True: student  # keep it there when Lightning calls train()
    assert (
        len(
            _eval_mode_warnings(
                DistillationModule(digits_teacher(), student, optimizer=adam, teacher_as_given=True), digits
            )
        )
        == 1
    )


class _WithIdleLayer(nn.Module):
    """A digits CNN student with a submodule that forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.net = digits_student()
        self.idle = nn.Linear(4, 4)

    def forward(self, x):
        return self.net(x)


def test_a_feature_layer_that_forward_never_runs_is_named_at_setup(digits):
    module = DistillationModule(
        digits_teacher(), _WithIdleLayer(), objective=Hint("idle", "conv2"), optimizer=adam, teacher_as_given=True
    )
    with pytest.raises(ValueError, match=r"student layer\(s\) \['idle'\] of _WithIdleLayer never run in its forward"):
        tiny_trainer(max_epochs=1).fit(module, datamodule=digits)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_classifier_label_smoothing_outside_0_1_is_refused(value):
    from kdlight import ClassifierModule

    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\].*ClassifierModule"):
        ClassifierModule(digits_student(), label_smoothing=value)
