"""Unstructured pruning of the student: schedule, exact final sparsity, the teacher untouched, logging."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlight import DistillationModule
from kdlight.compression import CompressedCheckpoint, StudentPruning, scheduled_sparsity, sparsity_counts
from kdlight.objectives import KD

from conftest import digits_student, digits_teacher, tiny_trainer


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def pruned_fit(digits, teacher_checkpoint, pruning, epochs=3, **trainer_args):
    module = DistillationModule(
        digits_teacher(), digits_student(), KD(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
    )
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = tiny_trainer(max_epochs=epochs, callbacks=[pruning], limit_train_batches=4, **trainer_args)
    trainer.fit(module, datamodule=digits)
    return module, teacher_before, trainer


def test_cubic_and_linear_schedules_follow_their_formulas():
    # Zhu & Gupta 2017: s_t = s_f (1 - (1 - p)^3), p = steps done / steps in the ramp
    assert [scheduled_sparsity(e, 0.8, 1, 4, "cubic") for e in range(6)] == pytest.approx(
        [0.0] + [0.8 * (1 - (1 - k / 4) ** 3) for k in (1, 2, 3, 4)] + [0.8]
    )
    assert [scheduled_sparsity(e, 0.8, 0, 3, "linear") for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8])
    assert scheduled_sparsity(0, 0.5, 2, 5, "one_shot") == 0.0 and scheduled_sparsity(2, 0.5, 2, 5, "one_shot") == 0.5


@pytest.mark.parametrize("global_pruning", [True, False])
def test_final_sparsity_is_the_requested_amount_and_the_teacher_is_bit_identical(
    digits, teacher_checkpoint, global_pruning
):
    pruning = StudentPruning(amount=0.8, schedule="linear", end_epoch=1, global_pruning=global_pruning)
    module, teacher_before, trainer = pruned_fit(digits, teacher_checkpoint, pruning)
    teacher_after = module.teacher.state_dict()
    assert teacher_before.keys() == teacher_after.keys()
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    weights = [m.weight for m in module.student.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    counts = [(int((w == 0).sum()), w.numel()) for w in weights]
    if global_pruning:  # exactly round(0.8 * all weights) zeros over the student's kernels and matrices
        assert sum(z for z, _ in counts) == round(0.8 * sum(n for _, n in counts))
    else:  # each layer loses round(0.8 * its size)
        assert all(z == round(0.8 * n) for z, n in counts)
    assert not any(hasattr(m, "weight_mask") for m in module.student.modules())  # masks made permanent at fit end
    nonzero, total = sparsity_counts(module.student)
    assert trainer.callback_metrics["compress/sparsity"].item() == pytest.approx(0.8, abs=1e-3)
    assert trainer.callback_metrics["compress/nonzero_params"].item() == nonzero
    assert (
        trainer.callback_metrics["compress/total_params"].item()
        == total
        == sum(p.numel() for p in module.student.parameters())
    )


def test_pruned_weights_stay_zero_while_training(digits, teacher_checkpoint):
    pruning = StudentPruning(amount=0.5, schedule="one_shot", make_pruning_permanent=False)
    module, _, _ = pruned_fit(digits, teacher_checkpoint, pruning, epochs=2)
    masked = [m for m in module.student.modules() if hasattr(m, "weight_mask")]
    assert masked
    for layer in masked:
        assert torch.all(layer.weight[layer.weight_mask == 0] == 0)
        assert (layer.weight_mask == 0).any()
    module.student(torch.randn(2, 1, 8, 8)).sum().backward()  # masked weights are now in the autograd graph
    copy.deepcopy(module.student)  # still copyable (the explanation callback copies it for its chance level)


def test_best_checkpoint_only_from_epochs_at_the_target(digits, teacher_checkpoint, tmp_path):
    pruning = StudentPruning(amount=0.9, schedule="linear", end_epoch=2)
    best = CompressedCheckpoint(dirpath=tmp_path, filename="best", monitor="val/acc", mode="max")
    module = DistillationModule(
        digits_teacher(), digits_student(), KD(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
    )
    trainer = tiny_trainer(max_epochs=4, callbacks=[pruning, best], enable_checkpointing=True, limit_train_batches=4)
    trainer.fit(module, datamodule=digits)
    saved = torch.load(best.best_model_path, weights_only=True)
    assert saved["epoch"] >= 2
    kernels = [v for k, v in saved["state_dict"].items() if k.startswith("student.") and v.dim() >= 2]
    zeros = sum(int((v == 0).sum()) for v in kernels) / sum(v.numel() for v in kernels)
    assert zeros == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"amount": 1.0}, "amount must be a fraction in [0, 1)"),
        ({"amount": -0.1}, "amount must be a fraction in [0, 1)"),
        ({"schedule": "exp"}, "valid schedules are: cubic, linear, one_shot"),
        ({"parameter_names": ["scale"]}, "valid names are: weight, bias"),
        ({"start_epoch": 3, "end_epoch": 1}, "start_epoch <= end_epoch"),
    ],
)
def test_bad_settings_are_one_line(args, words):
    with pytest.raises(ValueError) as err:
        StudentPruning(**args)
    message = str(err.value)
    assert words in message and "\n" not in message


def test_masks_kept_in_memory_still_give_checkpoints_that_resume_and_test(digits, teacher_checkpoint, tmp_path):
    """make_pruning_permanent=False keeps the masks on the model, never in checkpoints: a resumed fit
    ends at exactly the requested sparsity and a test right after the fit reloads the same weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(epochs, ckpt_path=None, saver=None):
        module = DistillationModule(
            digits_teacher(), digits_student(), KD(), teacher_checkpoint=str(teacher_checkpoint), optimizer=adam
        )
        pruning = StudentPruning(amount=0.8, schedule="linear", end_epoch=2, make_pruning_permanent=False)
        trainer = tiny_trainer(
            max_epochs=epochs,
            callbacks=[pruning, *([saver] if saver else [])],
            enable_checkpointing=saver is not None,
            limit_train_batches=2,
            limit_val_batches=2,
        )
        trainer.fit(module, datamodule=digits, ckpt_path=ckpt_path)
        return module, trainer

    saver = ModelCheckpoint(dirpath=tmp_path, filename="last")
    first, trainer = fit(2, saver=saver)
    state = torch.load(saver.best_model_path, weights_only=True)["state_dict"]
    assert "student.classifier.weight" in state and not any(k.endswith(("_orig", "_mask")) for k in state)
    weights = [m.weight.clone() for m in first.student.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    trainer.test(first, datamodule=digits, ckpt_path=saver.best_model_path, verbose=False)
    now = [m.weight for m in first.student.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(torch.equal(a, b) for a, b in zip(weights, now))

    resumed, _ = fit(4, ckpt_path=saver.best_model_path)
    kernels = [m.weight for m in resumed.student.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(int((w == 0).sum()) for w in kernels) == round(0.8 * sum(w.numel() for w in kernels))


def test_one_shot_pruning_is_at_its_target_from_its_start_epoch():
    pruning = StudentPruning(amount=0.5, schedule="one_shot", start_epoch=1, end_epoch=3)
    assert scheduled_sparsity(1, 0.5, 1, 3, "one_shot") == 0.5
    assert [pruning.reached_target(e) for e in range(4)] == [False, True, True, True]


def test_dense_reference_is_the_student_pruning_starts_from(digits, teacher_checkpoint):
    from lightning.pytorch import Callback

    from kdlight.objectives import Composite
    from kdlight.objectives.preservation import ExplanationPreservation

    class DenseAtStart(Callback):  # listed before the pruning callback
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                self.state = {k: v.clone() for k, v in pl_module.student.state_dict().items()}

    preserve = ExplanationPreservation(reference="dense_student", weight=0.1)
    module = DistillationModule(
        digits_teacher(),
        digits_student(),
        Composite([KD(), preserve]),
        teacher_checkpoint=str(teacher_checkpoint),
        optimizer=adam,
    )
    dense = DenseAtStart()
    pruning = StudentPruning(amount=0.5, schedule="one_shot", start_epoch=1)
    tiny_trainer(max_epochs=3, callbacks=[dense, pruning], limit_train_batches=2, limit_val_batches=1).fit(
        module, datamodule=digits
    )
    reference = preserve.reference_model.state_dict()
    assert reference.keys() == dense.state.keys()  # plain weights, no masks
    assert all(torch.equal(reference[k], dense.state[k]) for k in reference)
