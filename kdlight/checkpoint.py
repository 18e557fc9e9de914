"""Loading teacher weights from a Lightning checkpoint or a plain ``state_dict`` file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Prefixes under which kdlight's modules store the network that a teacher should receive.
_PREFIXES = ("model.", "student.")


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        for prefix in _PREFIXES:
            if any(k.startswith(prefix) for k in state):
                return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return dict(state)
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise ValueError(
        f"teacher checkpoint {path} holds neither a Lightning checkpoint nor a state_dict "
        f"(got {type(obj).__name__}); save one with torch.save(model.state_dict(), path)"
    )


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | Path, role: str = "teacher") -> None:
    """Load ``path`` into ``model`` strictly, with errors that name the file and the keys.

    Accepts a ``ClassifierModule`` / ``DistillationModule`` checkpoint (the network under
    ``model.`` or the student under ``student.``, so a distilled student can teach the next
    model in a teacher-assistant chain) or a plain ``state_dict``. Uses ``weights_only=True``.
    """
    path = Path(path)
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
