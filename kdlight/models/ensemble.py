"""An ensemble of teachers that acts as one teacher (multi-teacher distillation)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlight.core.weights import load_weights


class TeacherEnsemble(nn.Module):
    """Several classifiers behind one ``forward``: the mean of the members' logits.

    The members are kept in ``self.members`` (an ``nn.ModuleList``), so feature taps can read every
    member's own logits at ``members.0``, ``members.1``, ... (what
    :class:`kdlight.objectives.multi_teacher.MultiTeacherKD` distils from) and any inner layer at
    ``members.<i>.<layer>`` (e.g. a hint from ``members.0.conv2``).

    Args:
        members: the teacher networks; all must output the same number of classes for the same input.
        checkpoints: one file per member, loaded with :func:`kdlight.core.weights.load_weights` (a
            ``ClassifierModule`` / ``DistillationModule`` checkpoint or a ``state_dict`` file). Leave it
            out when the ensemble's weights come from elsewhere (``DistillationModule``'s
            ``teacher_checkpoint`` holding a whole ensemble, or a resumed checkpoint).

    Use it as the ``teacher`` of a ``DistillationModule``, which freezes it like any teacher.
    """

    gradcam_layer: str | None = None  # one map per member: name a member's layer, e.g. members.0.conv3

    def __init__(self, members: list[nn.Module], checkpoints: list[str] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("TeacherEnsemble needs at least one member")
        if any(m is n for i, m in enumerate(members) for n in members[:i]):
            raise ValueError("TeacherEnsemble members must be distinct module instances")
        if checkpoints is not None:
            if len(checkpoints) != len(members):
                raise ValueError(f"TeacherEnsemble got {len(members)} members but {len(checkpoints)} checkpoints")
            for i, (member, path) in enumerate(zip(members, checkpoints)):
                try:
                    load_weights(member, path, role="teacher")
                except (FileNotFoundError, ValueError) as err:
                    raise type(err)(f"TeacherEnsemble member {i} ({type(member).__name__}): {err}") from None
        self.members = nn.ModuleList(members)
        classes = {getattr(m, "num_classes", None) for m in members} - {None}
        if len(classes) > 1:
            raise ValueError(f"TeacherEnsemble members output different numbers of classes: {sorted(classes)}")
        self.num_classes = classes.pop() if classes else None

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        logits = [member(x) for member in self.members]
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) > 1:
            raise ValueError(f"TeacherEnsemble members returned logits of different shapes: {sorted(shapes)}")
        return torch.stack(logits).mean(0)
