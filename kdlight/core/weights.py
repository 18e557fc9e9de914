"""Loading teacher weights from a Lightning checkpoint or a plain ``state_dict`` file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlight.core.pruned import rebuild_for_checkpoint

# Prefixes under which kdlight's modules store the network that a teacher should receive.
_PREFIXES = ("model.", "student.")
#: attribute :func:`load_weights` sets on the module it filled: ``{"path": str, "data": [records]}``
SOURCE_ATTR = "_kdlight_weights_source"


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        for prefix in _PREFIXES:
            if any(k.startswith(prefix) for k in state):
                return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        return dict(state)
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    nested = (
        [
            k
            for k, v in obj.items()
            if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())
        ]
        if isinstance(obj, dict)
        else []
    )
    where = f" (a dict whose state_dict seems to be under key {nested[0]!r}: save that one)" if nested else ""
    raise ValueError(
        f"teacher checkpoint {path} holds neither a Lightning checkpoint nor a state_dict "
        f"(got {type(obj).__name__}{where}); save one with torch.save(model.state_dict(), path)"
    )


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _natural(name: str) -> list[object]:
    """Sort key that puts version_9 before version_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _directory_message(path: Path, role: str) -> str:
    """One line for a directory given as a checkpoint: the .ckpt files in it (or one level down)."""
    found = sorted((p.relative_to(path).as_posix() for p in path.glob("*.ckpt")), key=_natural)
    found = found or sorted((p.relative_to(path).as_posix() for p in path.glob("*/*.ckpt")), key=_natural)
    if not found:
        return (
            f"{role}_checkpoint {path} is a directory with no .ckpt file in it; give a checkpoint file "
            f"(e.g. {path / 'best.ckpt'}, written when the {role}'s fit completes) or train the {role} first"
        )
    best = [f for f in found if f.rsplit("/", 1)[-1] == "best.ckpt"]
    suggestion = path / (best[-1] if best else found[-1])
    return (
        f"{role}_checkpoint {path} is a directory, not a checkpoint file; it holds {_short(found, limit=8)}: "
        f"give one of them, e.g. {suggestion}"
    )


def load_weights(model: nn.Module, path: str | Path, role: str = "teacher") -> list[dict[str, Any]]:
    """Load ``path`` into ``model`` strictly, with errors that name the file and the keys.

    Accepts a ``ClassifierModule`` / ``DistillationModule`` checkpoint (the network under
    ``model.`` or the student under ``student.``, so a distilled student can teach the next
    model in a teacher-assistant chain) or a plain ``state_dict``. Uses ``weights_only=True``.

    Returns the records of the data the loaded network was trained on (:func:`training_data`;
    empty for files without them) and marks ``model`` as loaded from ``path`` (:func:`checkpoint_sources`).
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(_directory_message(path, role))
    if not path.is_file():
        raise FileNotFoundError(
            f"{role}_checkpoint {path} does not exist; train the {role} first "
            f"(e.g. kdlight fit -c configs/digits/teacher.yaml) or fix the path"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not read {role}_checkpoint {path}: {first_line}") from None
    state = _extract_state_dict(obj, path)
    rebuild_for_checkpoint(model, obj, state, source=f"{role}_checkpoint {path}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{role}_checkpoint {path} does not match the {role} model ({type(model).__name__}): "
            f"missing keys [{_short(missing)}]; unexpected keys [{_short(unexpected)}]"
        )
    wrong = [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5])
        raise ValueError(f"{role}_checkpoint {path} has tensors of the wrong shape for the {role} model: {details}")
    model.load_state_dict(state)
    data = training_data(obj, str(path))
    model.__dict__[SOURCE_ATTR] = {"path": str(path), "data": data}
    return data


def training_data(checkpoint: object, path: str | None = None) -> list[dict[str, Any]]:
    """The data records (``kdlight_data``, see ``ArrayDataModule.data_record``) of what the network
    in a kdlight checkpoint was trained on: its own, then those of its teachers for a distilled
    network (``kdlight_teacher_data``). Each record gets ``checkpoint``: the file it came from.
    Empty for plain state_dicts and checkpoints written before kdlight stored the records."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("kdlight_data"), dict):
        return []
    own = dict(checkpoint["kdlight_data"])
    if path is not None:
        own["checkpoint"] = path
    teachers = checkpoint.get("kdlight_teacher_data")
    return [own, *(r for r in teachers if isinstance(r, dict))] if isinstance(teachers, list) else [own]


def checkpoint_sources(model: nn.Module) -> list[dict[str, Any]] | None:
    """The :func:`load_weights` marks of ``model`` and its submodules if together they cover all
    of its parameters (e.g. a ``TeacherEnsemble`` whose members each loaded a file), else None."""
    marks = [(m, m.__dict__[SOURCE_ATTR]) for m in model.modules() if SOURCE_ATTR in m.__dict__]
    covered = {id(p) for m, _ in marks for p in m.parameters()}
    if not marks or any(id(p) not in covered for p in model.parameters()):
        return None
    return [mark for _, mark in marks]
