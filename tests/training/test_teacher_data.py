"""Where the teacher comes from: no silent random teacher, no val/test samples the teacher trained on."""

from __future__ import annotations

import warnings

import pytest
import torch

from kdlight import DistillationModule
from kdlight.core.weights import load_weights
from kdlight.data import DigitsDataModule
from kdlight.models.ensemble import TeacherEnsemble

from conftest import digits_student, digits_teacher, tiny_trainer

RUNNERS = {
    "fit": lambda trainer, module, dm: trainer.fit(module, datamodule=dm),
    "validate": lambda trainer, module, dm: trainer.validate(module, datamodule=dm, verbose=False),
    "test": lambda trainer, module, dm: trainer.test(module, datamodule=dm, verbose=False),
}


def distil(teacher_checkpoint=None, teacher=None, **kwargs) -> DistillationModule:
    path = None if teacher_checkpoint is None else str(teacher_checkpoint)
    return DistillationModule(teacher or digits_teacher(), digits_student(), teacher_checkpoint=path, **kwargs)


def validate(module: DistillationModule, dm, **kwargs) -> None:
    tiny_trainer(limit_val_batches=1).validate(module, datamodule=dm, verbose=False, **kwargs)


def leaked(teacher_dm: DigitsDataModule, dm: DigitsDataModule) -> tuple[int, int]:
    """(val/test samples of ``dm`` in the teacher's training split, all val/test samples), by index."""
    teacher_dm.setup(), dm.setup()
    evaluation = set(dm.split_indices["val"]) | set(dm.split_indices["test"])
    return len(evaluation & set(teacher_dm.split_indices["train"])), len(evaluation)


def overlap_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "val/test samples" in str(w.message)]


@pytest.fixture(scope="module")
def distilled(teacher_checkpoint, digits, tmp_path_factory):
    """A DistillationModule checkpoint (1 step) of a student distilled from the seed-0 teacher on seed-0 data."""
    module = distil(teacher_checkpoint)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=digits)
    path = tmp_path_factory.mktemp("distilled") / "distilled.ckpt"
    trainer.save_checkpoint(path)
    return path


# -- the record in every checkpoint ----------------------------------------------------------------
def test_checkpoints_record_their_data_weights_only(teacher_checkpoint, distilled, digits):
    record = torch.load(teacher_checkpoint, map_location="cpu", weights_only=True)["kdlight_data"]
    assert record["class"] == "kdlight.data.digits.DigitsDataModule"
    assert record["args"]["seed"] == 0 and record["args"]["val_fraction"] == 0.15
    assert "batch_size" not in record["args"] and "num_workers" not in record["args"]
    assert record["sizes"] == digits.split_sizes()
    assert set(record["fingerprints"]) == {"train", "val", "test"}
    hashes = record["train_hashes"]
    assert hashes.dtype == torch.int64 and len(hashes) == record["sizes"]["train"] == len(hashes.unique())
    assert torch.equal(hashes, digits.split_hashes("train").sort().values)

    stored = torch.load(distilled, map_location="cpu", weights_only=True)
    assert stored["kdlight_data"]["fingerprints"] == record["fingerprints"]  # the student's data: the same split
    (teacher,) = stored["kdlight_teacher_data"]
    assert teacher["checkpoint"] == str(teacher_checkpoint) and torch.equal(teacher["train_hashes"], hashes)


# -- leakage: val/test samples the teacher trained on --------------------------------------------
def test_same_seed_as_the_teacher_passes_quietly(teacher_checkpoint):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        validate(distil(teacher_checkpoint), DigitsDataModule(seed=0))
    assert overlap_warnings(record) == []


@pytest.mark.parametrize("stage", list(RUNNERS))
def test_another_seed_is_refused_with_the_count(teacher_checkpoint, digits, stage):
    other = DigitsDataModule(seed=1)
    count, total = leaked(digits, other)
    assert 0 < count < total
    trainer = tiny_trainer(max_steps=1, limit_val_batches=1, limit_test_batches=1)
    with pytest.raises(ValueError) as err:
        RUNNERS[stage](trainer, distil(teacher_checkpoint), other)
    message = str(err.value)
    assert "\n" not in message
    assert f"teacher_checkpoint {teacher_checkpoint} was trained on {count} of the {total} val/test samples" in message
    assert "its split came from seed=0, this run's from seed=1" in message
    assert "allow_teacher_data_overlap=true" in message


def test_another_split_fraction_is_named(teacher_checkpoint, digits):
    other = DigitsDataModule(seed=0, val_fraction=0.25)
    count, _ = leaked(digits, other)
    assert count > 0
    with pytest.raises(
        ValueError, match=rf"trained on {count} of .*val_fraction=0.15, this run's from val_fraction=0.25"
    ):
        validate(distil(teacher_checkpoint), other)


def test_opt_out_warns_loudly_and_runs(teacher_checkpoint, digits):
    other = DigitsDataModule(seed=1)
    count, total = leaked(digits, other)
    module = distil(teacher_checkpoint, allow_teacher_data_overlap=True)
    with pytest.warns(UserWarning, match=rf"was trained on {count} of the {total} val/test samples.*inflated"):
        validate(module, other)
    assert "val/teacher_acc" in module.trainer.callback_metrics


def test_teacher_files_without_the_record_skip_the_check(teacher_checkpoint, tmp_path):
    stored = torch.load(teacher_checkpoint, map_location="cpu", weights_only=True)
    old = {k: v for k, v in stored.items() if k != "kdlight_data"}  # a checkpoint from before the record
    torch.save(old, tmp_path / "old.ckpt")
    plain = {k.removeprefix("model."): v for k, v in stored["state_dict"].items()}
    torch.save(plain, tmp_path / "plain.pt")
    for path in (tmp_path / "old.ckpt", tmp_path / "plain.pt"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            validate(distil(path), DigitsDataModule(seed=1))
        assert overlap_warnings(record) == []


def test_a_distilled_teacher_carries_its_teachers_data(teacher_checkpoint, digits, tmp_path):
    """Teacher-assistant chains: the assistant trained on seed 1 (overlap allowed), its teacher on
    seed 0; a student on seed 1 evaluates on samples the first teacher trained on."""
    seed1 = DigitsDataModule(seed=1)
    assistant = distil(teacher_checkpoint, allow_teacher_data_overlap=True)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match="val/test samples"):
        trainer.fit(assistant, datamodule=seed1)
    trainer.save_checkpoint(tmp_path / "assistant.ckpt")
    count, total = leaked(digits, seed1)
    with pytest.raises(
        ValueError, match=rf"teacher_checkpoint {teacher_checkpoint} was trained on {count} of the {total}"
    ):
        validate(
            DistillationModule(digits_student(), digits_student(), teacher_checkpoint=str(tmp_path / "assistant.ckpt")),
            seed1,
        )


def test_a_restored_distillation_checkpoint_brings_the_teacher_and_its_record(distilled, digits):
    """Resuming / evaluating a fit checkpoint needs no teacher_checkpoint (the CLI drops a missing
    one): the teacher's weights and the record of its data come from the checkpoint."""
    validate(distil(), DigitsDataModule(seed=0), ckpt_path=str(distilled))
    with pytest.raises(ValueError, match=r"was trained on \d+ of the \d+ val/test samples"):
        validate(distil(), DigitsDataModule(seed=1), ckpt_path=str(distilled))
    loaded = DistillationModule.load_from_checkpoint(
        distilled, teacher=digits_teacher(), student=digits_student(), teacher_checkpoint=None
    )
    validate(loaded, digits)
    resumed = tiny_trainer(max_epochs=2, max_steps=2, limit_val_batches=0)
    resumed.fit(distil(), datamodule=digits, ckpt_path=str(distilled))
    assert resumed.global_step == 2


# -- no silent random teacher ----------------------------------------------------------------------
@pytest.mark.parametrize("stage", list(RUNNERS))
def test_no_teacher_checkpoint_is_refused(digits, stage):
    trainer = tiny_trainer(max_steps=1, limit_val_batches=1, limit_test_batches=1)
    with pytest.raises(ValueError) as err:
        RUNNERS[stage](trainer, distil(), digits)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("teacher_checkpoint is not set, so the teacher keeps its initial random weights")
    assert "teacher_as_given=true" in message


def test_teacher_as_given_opt_in(digits):
    module = distil(teacher_as_given=True)
    validate(module, digits)
    assert "val/teacher_acc" in module.trainer.callback_metrics


def test_an_ensemble_that_loaded_its_members_needs_no_teacher_checkpoint(teacher_checkpoint, digits):
    members = [digits_teacher(), digits_teacher()]
    validate(distil(teacher=TeacherEnsemble(members, checkpoints=[str(teacher_checkpoint)] * 2)), digits)
    partly = TeacherEnsemble([digits_teacher(), digits_teacher()])
    load_weights(partly.members[0], teacher_checkpoint)  # one member loaded, one random
    with pytest.raises(ValueError, match="teacher_checkpoint is not set"):
        validate(distil(teacher=partly), digits)
