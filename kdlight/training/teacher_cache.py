"""Teacher-output cache: the teacher's logits (and tapped features) per training sample."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CACHE_FORMAT = 2  # bumped whenever the layout of the file changes; older files are rebuilt
STALE_TEMP_SECONDS = 3600.0  # a temp file untouched this long belongs to a dead writer, whichever host


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


def _host() -> str:
    """This machine's name, safe inside a file name."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (``True`` when that cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there; rely on the file's age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists under another user, or not checkable: keep its file
    return True


def _short(err: BaseException) -> str:
    """``Type: first line of the message``, at most 160 characters."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 160 else text[:157] + "..."


class TeacherCache:
    """Teacher outputs for ``size`` training samples, addressed by sample index.

    ``location`` is ``"memory"`` or a directory: then the full cache is written to
    ``<dir>/teacher_cache_<data>_rank<r>.pt`` once every sample has been seen (atomically: a
    temporary file in the same directory renamed into place) and read back by later runs, but only
    if its key matches: teacher (weights and class), training data, tapped ``teacher_layers`` and
    ``precision``. A file built for another key, or unreadable, is rebuilt with one warning.
    Temporary files left by killed writers are removed when a cache opens the directory.
    Only the samples of a batch that are not cached yet go through the teacher (under DDP each
    rank sees a new shard every epoch, so its cache fills sample by sample).
    """

    def __init__(
        self,
        size: int,
        location: str,
        teacher_key: str,
        data_key: str,
        rank: int = 0,
        teacher_layers: Iterable[str] = (),
        precision: str = "32-true",
    ) -> None:
        self.size, self.teacher_key, self.data_key = size, teacher_key, data_key
        self.teacher_layers = sorted(set(teacher_layers))
        self.key: dict[str, Any] = {
            "teacher": teacher_key,
            "data": data_key,
            "size": size,
            "teacher_layers": self.teacher_layers,
            "precision": str(precision),
        }
        self.path = None if location == "memory" else Path(location) / f"teacher_cache_{data_key}_rank{rank}.pt"
        self.valid = torch.zeros(size, dtype=torch.bool)
        self.logits: Tensor | None = None
        self.features: dict[str, Tensor] = {}
        self.saved = False
        self.complete = False  # once True, lookups skip the per-batch check (no host sync)
        if self.path is not None:
            remove_stale_temps(self.path.parent)
            if self.path.is_file():
                self._load()

    def _temp_path(self) -> Path:
        """Where this process writes before renaming: same directory, tagged with host and pid."""
        return temp_sibling(self.path)

    def _mismatch(self, stored: dict[str, Any]) -> list[str]:
        """What the stored key was built for that differs from this cache's key."""
        reasons = []
        if stored.get("teacher") != self.key["teacher"]:
            reasons.append(f"another teacher (teacher {stored.get('teacher')} vs {self.key['teacher']})")
        if stored.get("data") != self.key["data"] or stored.get("size") != self.key["size"]:
            reasons.append(
                f"other training data ({stored.get('size')} samples {stored.get('data')} vs {self.size} samples {self.data_key})"
            )
        if stored.get("teacher_layers") != self.key["teacher_layers"]:
            reasons.append(
                f"other tapped teacher layers ({stored.get('teacher_layers')} vs {self.key['teacher_layers']})"
            )
        if stored.get("precision") != self.key["precision"]:
            reasons.append(f"another precision ({stored.get('precision')} vs {self.key['precision']})")
        return reasons

    def _check(self, stored: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The entries of a loaded file; ValueError if they are not what this cache writes."""
        if not (
            isinstance(stored, dict) and stored.get("format") == CACHE_FORMAT and isinstance(stored.get("key"), dict)
        ):
            raise ValueError(f"not a kdlight teacher cache of format {CACHE_FORMAT}")
        valid, logits, features = stored.get("valid"), stored.get("logits"), stored.get("features")
        if not (isinstance(valid, Tensor) and valid.dtype == torch.bool and tuple(valid.shape) == (self.size,)):
            raise ValueError("bad 'valid' entry")
        if not (isinstance(logits, Tensor) and logits.dim() >= 1 and len(logits) == self.size):
            raise ValueError("bad 'logits' entry")
        if not (
            isinstance(features, dict)
            and sorted(features) == self.teacher_layers
            and all(isinstance(v, Tensor) and v.dim() >= 1 and len(v) == self.size for v in features.values())
        ):
            raise ValueError("bad 'features' entry")
        return valid, logits, features

    def _load(self) -> None:
        """Adopt the disk copy if it is intact and built for this key; else warn once and rebuild."""
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            stored_key = (
                stored.get("key") if isinstance(stored, dict) and stored.get("format") == CACHE_FORMAT else None
            )
            reasons = self._mismatch(stored_key) if isinstance(stored_key, dict) else []
            entries = None if reasons else self._check(stored)
        except Exception as err:  # truncated, corrupt or foreign file: rebuild (and overwrite) it
            warnings.warn(
                f"teacher cache {self.path} is unreadable ({_short(err)}); deleting it and rebuilding it from the teacher",
                stacklevel=3,
            )
            try:
                self.path.unlink()
            except OSError:
                pass  # overwritten once the rebuilt cache is complete
            return
        if reasons:  # a sound file for another key: rebuilt, then overwritten
            warnings.warn(f"teacher cache {self.path} was built for {'; '.join(reasons)}; rebuilding it", stacklevel=3)
            return
        self.valid, self.logits, self.features = entries
        self.saved = self.complete = bool(self.valid.all())

    def to(self, device: torch.device) -> TeacherCache:
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
        """Cache the teacher's ``logits`` and tapped ``features`` of the samples ``index``."""
        device = logits.device
        if self.logits is None:
            self.valid = self.valid.to(device)
            self.logits = torch.empty(self.size, *logits.shape[1:], dtype=logits.dtype, device=device)
            self.features = {
                k: torch.empty(self.size, *v.shape[1:], dtype=v.dtype, device=device) for k, v in features.items()
            }
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
        cpu = {k: v.cpu() for k, v in self.features.items()}
        state = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "valid": self.valid.cpu(),
            "logits": self.logits.cpu(),
            "features": cpu,
        }
        tmp = self._temp_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            os.replace(tmp, self.path)  # atomic: readers see the old file or the whole new one
        except (OSError, RuntimeError) as err:  # e.g. a read-only or full disk: keep the in-memory copy
            warnings.warn(
                f"could not write teacher cache {self.path} ({_short(err)}); it stays in memory for this run",
                stacklevel=2,
            )
        finally:
            try:
                tmp.unlink(missing_ok=True)  # only left when the write failed or was interrupted
            except OSError:
                pass
        self.saved = True


def temp_sibling(path: Path, prefix: str = "") -> Path:
    """Where this process writes ``path`` before renaming it into place: same directory, tagged with
    host and pid (``<prefix><name>.tmp-<host>-<pid>``), so :func:`remove_stale_temps` can tell whose it is."""
    return path.with_name(f"{prefix}{path.name}.tmp-{_host()}-{os.getpid()}")


def remove_stale_temps(
    directory: Path, pattern: str = "teacher_cache_*.pt.tmp-*", max_age: float = STALE_TEMP_SECONDS
) -> list[Path]:
    """Delete temp files or directories ``pattern`` (named by :func:`temp_sibling`) in ``directory``
    left by killed writers.

    A temp is stale when its writer (same host) is no longer running, or when it has not been
    touched for ``max_age`` seconds (any host). Readers never read temps either way.
    Returns the removed paths."""
    removed = []
    if not directory.is_dir():
        return removed
    host, now = _host(), time.time()
    for tmp in directory.glob(pattern):
        tag = tmp.name.rsplit(".tmp-", 1)[1]
        writer_host, _, pid = tag.rpartition("-")
        try:
            dead = writer_host == host and pid.isdigit() and not _pid_alive(int(pid))
            if dead or now - tmp.stat().st_mtime > max_age:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # gone already (another rank cleaned it) or not ours to remove
    return removed
