"""Teacher weights from Lightning checkpoints and plain state_dict files."""

from __future__ import annotations

import pytest
import torch

from kdlight import DistillationModule
from kdlight.core.weights import load_weights

from conftest import digits_student, digits_teacher, tiny_trainer


def test_loads_a_classifier_checkpoint(teacher_checkpoint):
    model = digits_teacher()
    load_weights(model, teacher_checkpoint)
    stored = torch.load(teacher_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(v, stored[f"model.{k}"]) for k, v in model.state_dict().items())


def test_loads_a_plain_state_dict(tmp_path):
    source = digits_teacher()
    path = tmp_path / "teacher.pt"
    torch.save(source.state_dict(), path)
    model = digits_teacher()
    load_weights(model, path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_distilled_student_can_teach_the_next_model(digits, tmp_path, teacher_checkpoint):
    module = DistillationModule(digits_teacher(), digits_student(), teacher_checkpoint=str(teacher_checkpoint))
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(module, datamodule=digits)
    trainer.save_checkpoint(tmp_path / "assistant.ckpt")
    assistant = digits_student()
    load_weights(assistant, tmp_path / "assistant.ckpt")
    assert all(torch.equal(v, module.student.state_dict()[k]) for k, v in assistant.state_dict().items())


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"teacher_checkpoint .*nope.ckpt does not exist"):
        load_weights(digits_teacher(), tmp_path / "nope.ckpt")


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read teacher_checkpoint .*garbage.ckpt"):
        load_weights(digits_teacher(), path)


def test_wrong_model_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "student.pt"
    torch.save(digits_student().state_dict(), path)
    from kdlight.models import MLP

    with pytest.raises(
        ValueError, match=r"does not match the teacher model \(MLP\): missing keys \[.*\]; unexpected keys \[.*conv1"
    ):
        load_weights(MLP(in_features=64, num_classes=10, hidden=[8]), path)


def test_same_keys_wrong_shapes(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(digits_student().state_dict(), path)
    with pytest.raises(ValueError, match="wrong shape"):
        load_weights(digits_teacher(), path)


def test_a_directory_lists_its_checkpoints(tmp_path):
    run = tmp_path / "teacher"
    (run / "version_0").mkdir(parents=True)
    for name in ("version_0/best.ckpt", "version_0/last.ckpt"):
        (run / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        load_weights(digits_teacher(), run)
    assert str(err.value) == (
        f"teacher_checkpoint {run} is a directory, not a checkpoint file; it holds version_0/best.ckpt, "
        f"version_0/last.ckpt: give one of them, e.g. {run / 'version_0' / 'best.ckpt'}"
    )
    (run / "best.ckpt").write_bytes(b"")  # the link a completed fit leaves at the top
    with pytest.raises(FileNotFoundError, match=r"it holds best.ckpt: give one of them, e.g. .*teacher/best.ckpt$"):
        load_weights(digits_teacher(), run)


def test_an_empty_directory_says_so(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"is a directory with no .ckpt file in it; give a checkpoint file \(e.g. .*best.ckpt"
    ):
        load_weights(digits_teacher(), tmp_path)


def test_a_lightning_checkpoint_of_another_model_is_one_line(teacher_checkpoint):
    from kdlight.models import MLP

    with pytest.raises(ValueError) as err:
        load_weights(MLP(in_features=64, num_classes=10, hidden=[8]), teacher_checkpoint)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"teacher_checkpoint {teacher_checkpoint} does not match the teacher model (MLP): missing keys ["
    )
    assert "unexpected keys [" in message and "conv1" in message


def test_a_wrapped_state_dict_names_the_key_that_holds_it(tmp_path):
    from kdlight.core.weights import load_weights

    model = torch.nn.Linear(2, 2)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    with pytest.raises(ValueError, match="state_dict seems to be under key 'model'"):
        load_weights(torch.nn.Linear(2, 2), path)
