"""The teacher's side of each run: its maps and per-probe faithfulness, computed once per teacher.

The teacher is frozen and the probes are fixed, so (unless ``target="student"``) its side is kept
in memory and, with an ``explanation_cache_dir``, on disk, under a hash of everything it depends
on: the teacher's weights, the probe inputs, the targets, the inputs' modality, the method
settings, the probe batch size (random methods draw per batch) and, for training-data baselines,
the training inputs. A changed teacher, probe set or setting gives a new key, never a stale entry;
every student distilled from the same teacher reads the same files.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from kdlight.explain.attribution import baseline_kind
from kdlight.explain.callback.measure import Measure
from kdlight.explain.callback.probes import Probes
from kdlight.training.teacher_cache import data_fingerprint, teacher_fingerprint

#: part of every key: bump it when how maps or faithfulness are computed changes
#: ("2": Grad-CAM's default layer is the model's ``gradcam_layer``, and one Grad-CAM implementation)
EXPLANATION_CACHE_VERSION = "2"


def cache_directory(setting: str | None, pl_module: LightningModule) -> Path | None:
    """The directory of ``explanation_cache_dir``: ``"auto"`` is ``explanations/`` beside the
    teacher checkpoint (``None``, memory only, when the teacher was not loaded from a file)."""
    if setting != "auto":
        return None if setting is None else Path(setting)
    checkpoint = getattr(pl_module, "teacher_checkpoint", None)
    return Path(checkpoint).parent / "explanations" if isinstance(checkpoint, str) else None


class TeacherSide:
    """The teacher's maps (``"maps"``) and per-probe faithfulness scores of each method."""

    def __init__(self, measure: Measure, batch_size: int, reuse: bool, faithfulness: bool) -> None:
        self.measure, self.batch_size = measure, batch_size
        self.reuse, self.faithfulness = reuse, faithfulness  # reuse: the target does not follow the student
        self.directory: Path | None = None
        self._entries: dict[str, dict[str, Tensor]] = {}
        self._weights_key: str | None = None

    def setup(self, directory: Path | None, models_changed: bool) -> None:
        """For a new stage: the teacher's weights are hashed again; entries of other models are dropped."""
        self.directory, self._weights_key = directory, None
        if models_changed:
            self._entries.clear()

    def get(self, method: str, teacher: nn.Module, probes: Probes) -> dict[str, Tensor]:
        """The teacher's side of ``method`` on ``probes``."""
        if not self.reuse:  # the target follows the student: nothing to reuse
            return self._completed(None, method, teacher, probes)
        key = self._key(method, teacher, probes)
        if key not in self._entries:
            path = self.directory / f"{method}_{key}.pt" if self.directory is not None else None
            stored = _load(path, probes.inputs.device)
            entry = self._completed(stored, method, teacher, probes)
            if entry is not stored:
                _save(path, entry)
            self._entries[key] = entry
        return self._entries[key]

    def _completed(
        self, entry: dict[str, Tensor] | None, method: str, teacher: nn.Module, probes: Probes
    ) -> dict[str, Tensor]:
        """``entry`` if it holds all this run needs, else a new entry with the missing maps and/or
        faithfulness scores computed."""
        if entry is not None and (not self.faithfulness or "deletion_auc" in entry):
            return entry
        entry = dict(entry or {})
        if "maps" not in entry:
            entry["maps"] = self.measure.maps(method, "teacher", teacher, probes)
        if self.faithfulness:
            entry.update(self.measure.faithfulness(method, teacher, probes, entry["maps"]))
        return entry

    def _key(self, method: str, teacher: nn.Module, probes: Probes) -> str:
        if self._weights_key is None:  # reset in setup: the weights are hashed once per stage
            self._weights_key = teacher_fingerprint(teacher)
        config = self.measure.config(method, "teacher")
        parts = [
            self._weights_key,
            probes.key,
            repr(probes.modality),
            repr(config),
            f"batch_size={self.batch_size}",
            EXPLANATION_CACHE_VERSION,
        ]
        if probes.train_inputs is not None and baseline_kind(config, True) in ("mean", "sample"):
            parts.append(data_fingerprint(probes.train_inputs))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _load(path: Path | None, device) -> dict[str, Tensor] | None:
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: recompute (and overwrite) it
        warnings.warn(f"ignoring unreadable teacher explanation cache {path} ({err}); recomputing it", stacklevel=3)
        return None


def _save(path: Path | None, entry: dict[str, Tensor]) -> None:
    """Write atomically (a temporary file renamed into place), so readers never see half a file."""
    if path is None:
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({name: value.detach().cpu() for name, value in entry.items()}, tmp)
        os.replace(tmp, path)
    except OSError as err:  # e.g. a read-only teacher directory: keep going with the in-memory copy
        warnings.warn(
            f"could not write the teacher explanation cache {path} ({err}); it stays in memory for this run",
            stacklevel=3,
        )
