"""TeacherEnsemble: mean of the members' logits, per-member taps, checkpoints, use as a frozen teacher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight import DistillationModule
from kdlight.models import MLP, CNN2d
from kdlight.models.ensemble import TeacherEnsemble
from kdlight.objectives.multi_teacher import MultiTeacherKD
from kdlight.training.taps import FeatureTaps

from conftest import digits_student, digits_teacher, tiny_trainer


def members(n: int = 3, classes: int = 4) -> list[nn.Module]:
    torch.manual_seed(0)
    return [MLP(in_features=6, num_classes=classes, hidden=[8]) for _ in range(n)]


def test_forward_is_the_mean_of_the_member_logits():
    parts = members(3)
    x = torch.randn(5, 6)
    expected = sum(m(x) for m in parts) / 3
    assert torch.allclose(TeacherEnsemble(parts)(x), expected, atol=1e-6)
    one = members(1)
    assert torch.equal(TeacherEnsemble(one)(x), one[0](x))


def test_members_are_a_module_list_that_taps_can_reach():
    parts = members(2)
    ensemble = TeacherEnsemble(parts)
    assert isinstance(ensemble.members, nn.ModuleList) and len(ensemble) == 2
    assert all(k.startswith("members.") for k in ensemble.state_dict())
    x = torch.randn(5, 6)
    with FeatureTaps(ensemble, ["members.0", "members.1", "members.1.layers"]) as taps:
        ensemble(x)
        features = taps.pop()
    assert torch.equal(features["members.0"], parts[0](x))
    assert torch.equal(features["members.1"], parts[1](x))
    assert features["members.1.layers"].shape == (5, 8)


def test_checkpoints_are_loaded_into_each_member(tmp_path):
    sources = members(2)
    # a plain state_dict file and a Lightning-style checkpoint of a ClassifierModule (network under model.)
    torch.save(sources[0].state_dict(), tmp_path / "a.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sources[1].state_dict().items()}}, tmp_path / "b.ckpt")
    torch.manual_seed(1)
    fresh = [MLP(in_features=6, num_classes=4, hidden=[8]) for _ in range(2)]
    ensemble = TeacherEnsemble(fresh, checkpoints=[str(tmp_path / "a.pt"), str(tmp_path / "b.ckpt")])
    for member, source in zip(ensemble.members, sources):
        for key, value in source.state_dict().items():
            assert torch.equal(member.state_dict()[key], value)


def test_a_distilled_student_checkpoint_can_be_a_member(digits, tmp_path):
    """A DistillationModule checkpoint gives its student (prefix student.), as in a TA chain."""
    module = DistillationModule(
        digits_teacher(), digits_student(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), teacher_as_given=True
    )
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(module, datamodule=digits)
    trainer.save_checkpoint(tmp_path / "distilled.ckpt")
    ensemble = TeacherEnsemble([digits_student()], checkpoints=[str(tmp_path / "distilled.ckpt")])
    for key, value in module.student.state_dict().items():
        assert torch.equal(ensemble.members[0].state_dict()[key], value)


def test_errors_name_the_member_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match="at least one member"):
        TeacherEnsemble([])
    with pytest.raises(ValueError, match="2 members but 1 checkpoints"):
        TeacherEnsemble(members(2), checkpoints=["a.pt"])
    with pytest.raises(FileNotFoundError, match=r"member 1 \(MLP\): teacher_checkpoint .*missing.pt does not exist"):
        parts = members(2)
        torch.save(parts[0].state_dict(), tmp_path / "ok.pt")
        TeacherEnsemble(parts, checkpoints=[str(tmp_path / "ok.pt"), str(tmp_path / "missing.pt")])
    torch.save(MLP(in_features=6, num_classes=4, hidden=[3]).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"member 0 \(MLP\): .*wrong shape"):
        TeacherEnsemble(members(1), checkpoints=[str(tmp_path / "narrow.pt")])
    with pytest.raises(ValueError, match=r"different numbers of classes: \[3, 4\]"):
        TeacherEnsemble([*members(1, classes=4), *members(1, classes=3)])
    shared = members(1)[0]
    with pytest.raises(ValueError, match="distinct module instances"):
        TeacherEnsemble([shared, shared])


def two_teachers() -> TeacherEnsemble:
    torch.manual_seed(0)
    return TeacherEnsemble([digits_teacher(), CNN2d(in_channels=1, num_classes=10, channels=[8, 16], hidden=32)])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["average", "each"])
def test_ensemble_teacher_distils_into_a_student_and_stays_frozen(digits, mode):
    ensemble = two_teachers()
    module = DistillationModule(
        ensemble,
        digits_student(),
        objective=MultiTeacherKD(num_teachers=2, mode=mode),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        teacher_as_given=True,
    )
    before, student_before = snapshot(module.teacher), snapshot(module.student)
    trainer = tiny_trainer(max_steps=3, log_every_n_steps=1)
    trainer.fit(module, datamodule=digits)
    metrics = trainer.callback_metrics
    names = ["train/loss_kd"] if mode == "average" else ["train/loss_kd_0", "train/loss_kd_1"]
    assert all(name in metrics for name in [*names, "train/loss_ce"]), sorted(metrics)
    assert all(torch.equal(v, before[k]) for k, v in module.teacher.state_dict().items())
    assert not any(m.training for m in module.teacher.modules())
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items())
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in module.teacher.parameters()}


def test_validation_teacher_accuracy_is_that_of_the_mean_logits(digits):
    module = DistillationModule(
        two_teachers(), digits_student(), objective=MultiTeacherKD(num_teachers=2), teacher_as_given=True
    )
    trainer = tiny_trainer()
    trainer.validate(module, datamodule=digits, verbose=False)
    x, y = digits.split_tensors("val")
    with torch.no_grad():
        mean_logits = sum(m(x) for m in module.teacher.members) / 2
    expected = (mean_logits.argmax(1) == y).float().mean().item()
    assert trainer.callback_metrics["val/teacher_acc"].item() == pytest.approx(expected, abs=1e-6)


def test_objective_and_ensemble_sizes_must_agree(digits):
    module = DistillationModule(
        two_teachers(), digits_student(), objective=MultiTeacherKD(num_teachers=3), teacher_as_given=True
    )
    with pytest.raises(ValueError, match="teacher has no submodule 'members.2'"):
        tiny_trainer(max_steps=1).fit(module, datamodule=digits)
