"""Teacher-output cache: the teacher's logits (and tapped features) per training sample."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the teacher's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(inputs: Tensor) -> str:
    """SHA-256 (16 hex digits) of the training inputs, in index order."""
    return hashlib.sha256(inputs.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class TeacherCache:
    """Teacher outputs for ``size`` training samples, addressed by sample index.

    ``location`` is ``"memory"`` or a directory: then the full cache is written to
    ``<dir>/teacher_cache_<data>_rank<r>.pt`` once every sample has been seen and read back by
    later runs, but only if the stored teacher and data fingerprints match (else it is rebuilt,
    with a warning). Only the samples of a batch that are not cached yet go through the teacher (under
    DDP each rank sees a new shard every epoch, so its cache fills sample by sample).
    """

    def __init__(self, size: int, location: str, teacher_key: str, data_key: str, rank: int = 0) -> None:
        self.size, self.teacher_key, self.data_key = size, teacher_key, data_key
        self.path = None if location == "memory" else Path(location) / f"teacher_cache_{data_key}_rank{rank}.pt"
        self.valid = torch.zeros(size, dtype=torch.bool)
        self.logits: Tensor | None = None
        self.features: dict[str, Tensor] = {}
        self.saved = False
        self.complete = False  # once True, lookups skip the per-batch check (no host sync)
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        stored = torch.load(self.path, map_location="cpu", weights_only=True)
        if stored.get("teacher") != self.teacher_key or stored.get("size") != self.size:
            warnings.warn(
                f"teacher cache {self.path} was built for another teacher or data "
                f"(teacher {stored.get('teacher')} vs {self.teacher_key}); rebuilding it",
                stacklevel=2,
            )
            return
        self.valid, self.logits, self.features = stored["valid"], stored["logits"], stored["features"]
        self.saved = self.complete = bool(self.valid.all())

    def to(self, device: torch.device) -> "TeacherCache":
        """Keep the entries on the training device (no host-device copies per step)."""
        self.valid = self.valid.to(device)
        if self.logits is not None:
            self.logits = self.logits.to(device)
            self.features = {k: v.to(device) for k, v in self.features.items()}
        return self

    def missing(self, index: Tensor) -> Tensor | None:
        """Positions of the batch whose samples are not cached yet (``None``: none are).

        Once the cache is complete this returns ``None`` without looking (no host sync)."""
        if self.complete:
            return None
        absent = ~self.valid[index.to(self.valid.device)]
        return absent.nonzero().squeeze(1) if bool(absent.any()) else None

    def read(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cached logits and features of ``index`` (every one of them must be cached)."""
        index = index.to(self.valid.device)
        return self.logits[index], {k: v[index] for k, v in self.features.items()}

    def store(self, index: Tensor, logits: Tensor, features: dict[str, Tensor]) -> None:
        device = logits.device
        if self.logits is None:
            self.valid = self.valid.to(device)
            self.logits = torch.empty(self.size, *logits.shape[1:], dtype=logits.dtype, device=device)
            self.features = {k: torch.empty(self.size, *v.shape[1:], dtype=v.dtype, device=device) for k, v in features.items()}
        index = index.to(device)
        self.logits[index] = logits.detach()
        for k, v in features.items():
            self.features[k][index] = v.detach()
        self.valid[index] = True

    def end_epoch(self) -> None:
        """Called after each training epoch: mark completeness and write the disk copy once."""
        self.complete = bool(self.valid.all())
        if self.path is None or self.saved or not self.complete:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cpu = {k: v.cpu() for k, v in self.features.items()}
        state = {"teacher": self.teacher_key, "data": self.data_key, "size": self.size,
                 "valid": self.valid.cpu(), "logits": self.logits.cpu(), "features": cpu}
        torch.save(state, self.path)
        self.saved = True
