"""Top-k teacher-output cache for causal-LM distillation on a fixed corpus.

:func:`open_topk_cache` runs the frozen teacher once over every training sequence and keeps, per
position, its ``k`` largest log-probabilities of ``softmax(z_t / temperature)`` and their token ids
(``[N, T, k]`` each, ``logprobs.npy`` in float16 or float32 and ``ids.npy`` in int32, read back
memory-mapped), with a ``manifest.json`` of what they were built from. The loss is then
:func:`~kdlight.functional.lm_topk.topk_forward_kl`: exact KL between teacher and student
coarsened to the ``k`` cached tokens plus one "other" bucket holding the rest of each side's mass,
a lower bound of the full forward KL, equal to it at ``k = V`` (what it misses: how the student
spreads the tail; measured in ``scripts/bench/lm_memory.py``). Hence only forward KL (plus the
student's own cross-entropy) can train from it; :func:`cached_terms` refuses other terms.

Where the cache lives (``location``): a directory holding ``manifest.json`` is one cache and must
match the run (else a one-line error naming what differs); any other directory is a parent that
keeps one cache per key in ``<location>/topk<k>-<key>``; ``"auto"`` is such a parent:
``lm_topk_cache/`` beside the teacher checkpoint when the teacher came from one, else
``$KDLIGHT_CACHE_DIR/lm_topk`` (default ``~/.cache/kdlight/lm_topk``). The key covers the teacher's
class and weights, the tokenizer record, the training ids, ``k``, the temperature and the storage
dtype. A build writes into a temporary sibling directory renamed into place when complete, so a
killed or failed build leaves no cache that opens (stale temporaries are removed later).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlight.core.schedules import Schedule
from kdlight.core.step import DistillStep, LossTerm
from kdlight.explain.attribution.context import eval_mode
from kdlight.functional.lm_topk import topk_forward_kl, topk_logprobs
from kdlight.objectives import Composite, Objective
from kdlight.objectives.lm import NextTokenCE, TokenKL
from kdlight.training.teacher_cache import data_fingerprint, remove_stale_temps, teacher_fingerprint, temp_sibling

__all__ = [
    "TopKTeacherCache",
    "open_topk_cache",
    "cached_terms",
    "check_cached_objective",
    "cache_root",
    "STORAGE_DTYPES",
]

CACHE_FORMAT = 1  # bumped whenever the files' layout changes (a new key: old caches are not read)
MANIFEST = "manifest.json"
#: storage dtype of the log-probabilities; float16 halves the disk of float32 for an error far
#: below the top-k approximation's own (scripts/bench/lm_memory.py)
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}
DEFAULT_STORAGE = "float16"
_FLOAT16_FLOOR = float(np.finfo(np.float16).min)  # log-probabilities below it would become -inf


def cache_root(location: str | os.PathLike, teacher_checkpoint: str | None = None) -> Path:
    """The directory of ``location``: ``"auto"`` is ``lm_topk_cache/`` beside ``teacher_checkpoint``,
    else ``$KDLIGHT_CACHE_DIR/lm_topk`` (default ``~/.cache/kdlight/lm_topk``)."""
    if str(location) != "auto":
        return Path(location)
    if teacher_checkpoint:
        return Path(teacher_checkpoint).parent / "lm_topk_cache"
    base = os.environ.get("KDLIGHT_CACHE_DIR") or Path.home() / ".cache" / "kdlight"
    return Path(base) / "lm_topk"


class TopKTeacherCache:
    """The teacher's top-``k`` log-probabilities and ids of ``N`` sequences, read memory-mapped."""

    def __init__(self, directory: Path, manifest: dict[str, Any], device: torch.device | str, built: bool) -> None:
        self.directory, self.manifest, self.built = directory, manifest, built
        self.k, self.temperature = int(manifest["k"]), float(manifest["temperature"])
        self.vocab_size = int(manifest["vocab_size"])
        try:
            self._logprobs = np.load(directory / "logprobs.npy", mmap_mode="r")
            self._ids = np.load(directory / "ids.npy", mmap_mode="r")
            shape = (*manifest["shape"], self.k)
            if self._logprobs.shape != shape or self._ids.shape != shape:
                raise ValueError(f"arrays {self._logprobs.shape}, {self._ids.shape} instead of {shape}")
            if self._logprobs.dtype != STORAGE_DTYPES[manifest["storage"]] or self._ids.dtype != np.int32:
                raise ValueError(f"dtypes {self._logprobs.dtype}, {self._ids.dtype}")
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"teacher cache {directory} is damaged ({err}); delete that directory to rebuild it"
            ) from None
        self.device = torch.device(device)

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def disk_bytes(self) -> int:
        """Bytes of the two arrays on disk."""
        return sum((self.directory / name).stat().st_size for name in ("logprobs.npy", "ids.npy"))

    def to(self, device: torch.device | str) -> TopKTeacherCache:
        """Return lookups on ``device`` from now on."""
        self.device = torch.device(device)
        return self

    def lookup(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities ``[B, T, k]`` (float32) and ids ``[B, T, k]`` (int64) of the rows ``index``, on ``device``.

        A row whose stored top-k mass exceeds 1 by rounding (float16) is rescaled to mass 1."""
        rows = index.detach().reshape(-1).cpu().numpy().astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(
                f"batch index {int(rows.min())}..{int(rows.max())} outside the cache's {len(self)} sequences; "
                "the batches' 'index' must be the row of train_inputs() the cache was built from"
            )
        logprobs = torch.from_numpy(np.ascontiguousarray(self._logprobs[rows])).to(self.device, torch.float32)
        ids = torch.from_numpy(np.ascontiguousarray(self._ids[rows])).to(self.device, torch.int64)
        excess = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp_min(0)
        return logprobs - excess, ids


def open_topk_cache(
    location: str | os.PathLike,
    k: int,
    teacher: nn.Module,
    inputs: Tensor,
    pad_id: int,
    data_record: dict[str, Any] | None,
    temperature: float = 1.0,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    *,
    storage: str = DEFAULT_STORAGE,
    teacher_checkpoint: str | None = None,
) -> TopKTeacherCache:
    """Open the top-``k`` cache of ``teacher`` on the training ids ``inputs`` ``[N, T]``, building it if absent.

    ``inputs`` are the data module's ``train_inputs()`` (row ``i`` = the batches' ``index`` ``i``);
    ``data_record`` its ``data_record()`` (its ``tokenizer`` entry enters the key). Building runs the
    teacher in eval mode under no_grad, ``batch_size`` sequences at a time, on its own device;
    lookups return tensors on ``device`` (default: the teacher's). ``storage``: ``"float16"`` or
    ``"float32"`` log-probabilities. Location and key: module docstring."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"teacher cache k must be a positive number of tokens per position, got {k!r}")
    if storage not in STORAGE_DTYPES:
        raise ValueError(
            f"unknown storage {storage!r} for the teacher cache; choose one of {', '.join(STORAGE_DTYPES)}"
        )
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"teacher cache temperature must be a number > 0, got {temperature!r}")
    if inputs.dim() != 2 or inputs.dtype.is_floating_point or len(inputs) == 0:
        raise ValueError(
            f"teacher cache inputs must be the training token ids [N, T] (N > 0, integer), got {inputs.dtype} "
            f"{list(inputs.shape)}; pass the data module's train_inputs()"
        )
    teacher_device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    key = _key(teacher, inputs, data_record, k, float(temperature), storage)
    root = cache_root(location, teacher_checkpoint)
    if (root / MANIFEST).is_file():  # the user pointed at one cache: it must be this run's
        manifest = _read_manifest(root)
        differences = _differences(manifest, key)
        if differences:
            raise ValueError(
                f"teacher cache {root} was built for {'; '.join(differences)}; delete it or point "
                "teacher_cache at another directory (a directory without manifest.json keeps one cache per key)"
            )
        return TopKTeacherCache(root, manifest, device or teacher_device, built=False)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    target = root / f"topk{k}-{digest}"
    built = False
    if not (target / MANIFEST).is_file():
        remove_stale_temps(root, ".topk*.tmp-*")
        _build(target, key, teacher, inputs, int(pad_id), batch_size, teacher_device)
        built = True
    manifest = _read_manifest(target)
    differences = _differences(manifest, key)
    if differences:  # a hash collision or a hand-edited manifest
        raise ValueError(f"teacher cache {target} was built for {'; '.join(differences)}; delete that directory")
    return TopKTeacherCache(target, manifest, device or teacher_device, built=built)


def _key(
    teacher: nn.Module, inputs: Tensor, data_record: dict[str, Any] | None, k: int, temperature: float, storage: str
) -> dict[str, Any]:
    """What the cached values depend on (JSON-able)."""
    tokenizer = (data_record or {}).get("tokenizer")
    return {
        "format": CACHE_FORMAT,
        "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        "teacher_weights": teacher_fingerprint(teacher),
        "tokenizer": json.loads(json.dumps(tokenizer)) if isinstance(tokenizer, dict) else None,
        "data": data_fingerprint(inputs),
        "shape": list(inputs.shape),
        "k": k,
        "temperature": temperature,
        "storage": storage,
    }


def _describe_tokenizer(record: Any) -> str:
    if not isinstance(record, dict):
        return "no tokenizer record"
    return f"{record.get('kind')} {record.get('vocab_size')} ids, vocabulary {str(record.get('vocab_sha256'))[:12]}"


def _differences(stored: dict[str, Any], key: dict[str, Any]) -> list[str]:
    """What the stored cache was built for that this run's ``key`` does not match, in words."""
    found = []
    if stored.get("teacher_class") != key["teacher_class"]:
        found.append(f"another teacher class ({stored.get('teacher_class')}, not {key['teacher_class']})")
    elif stored.get("teacher_weights") != key["teacher_weights"]:
        found.append(f"another teacher's weights ({stored.get('teacher_weights')}, not {key['teacher_weights']})")
    if stored.get("tokenizer") != key["tokenizer"]:
        found.append(
            f"another tokenizer ({_describe_tokenizer(stored.get('tokenizer'))}, not {_describe_tokenizer(key['tokenizer'])})"
        )
    if stored.get("data") != key["data"] or stored.get("shape") != key["shape"]:
        found.append(
            f"other training data ({stored.get('shape')} ids {stored.get('data')}, not {key['shape']} {key['data']})"
        )
    for name in ("k", "temperature", "storage", "format"):
        if stored.get(name) != key[name]:
            found.append(f"{name}={stored.get(name)} (this run asks for {name}={key[name]})")
    return found


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ValueError(f"teacher cache {directory}: unreadable {MANIFEST} ({err}); delete that directory") from None
    return manifest


def _build(
    target: Path, key: dict[str, Any], teacher: nn.Module, inputs: Tensor, pad_id: int, batch_size: int, device
) -> None:
    """Run the teacher over ``inputs`` and write the cache to ``target`` atomically (temp dir, rename)."""
    count, length = inputs.shape
    k, temperature = key["k"], key["temperature"]
    temp = temp_sibling(target, prefix=".")
    start = time.perf_counter()
    try:
        temp.mkdir(parents=True)
        shape = (count, length, k)
        logprobs = np.lib.format.open_memmap(temp / "logprobs.npy", "w+", STORAGE_DTYPES[key["storage"]], shape)
        ids = np.lib.format.open_memmap(temp / "ids.npy", "w+", np.int32, shape)
        vocab = None
        with eval_mode(teacher), torch.no_grad():
            for first in range(0, count, max(1, int(batch_size))):
                logits = teacher(inputs[first : first + batch_size].to(device))
                rows = min(batch_size, count - first)
                if logits.dim() != 3 or tuple(logits.shape[:2]) != (rows, length):
                    raise ValueError(
                        f"teacher returned {list(logits.shape)} for ids {[rows, length]}; the top-k teacher cache "
                        "needs a causal LM's next-token logits [B, T, V]"
                    )
                vocab = logits.shape[-1]
                if k > vocab:
                    raise ValueError(f"teacher cache k={k} exceeds the teacher's vocabulary of {vocab} tokens")
                values, top = topk_logprobs(logits, k, temperature)
                logprobs[first : first + rows] = values.clamp_min(_FLOAT16_FLOOR).cpu().numpy()
                ids[first : first + rows] = top.to(torch.int32).cpu().numpy()
        logprobs.flush(), ids.flush()
        del logprobs, ids
        manifest = {
            **key,
            "vocab_size": vocab,
            "pad_id": pad_id,
            "kdlight_version": _version(),
            "build_seconds": round(time.perf_counter() - start, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(temp, target)  # atomic: readers see no cache or the whole one
        except OSError:
            if not (target / MANIFEST).is_file():  # not another builder that finished first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # only left when the build failed or lost the race


def _version() -> str:
    from kdlight import __version__

    return __version__


# -- the objective's terms from the cache ------------------------------------------------------------
def _refusal(part: Objective) -> str:
    name = type(part).__name__
    if isinstance(part, TokenKL):
        name = f"TokenKL(direction={part.direction!r})"
    return (
        f"{name} needs the teacher's full next-token distribution, but the top-k teacher cache keeps only its "
        "top-k log-probabilities; drop teacher_cache or use TokenKL(direction='forward') (optionally with NextTokenCE)"
    )


def check_cached_objective(objective: Objective, temperature: float) -> None:
    """Refuse, in one line, an objective that cannot train from a cache built at ``temperature``."""
    if type(objective) is Composite:
        for part in objective.parts:
            check_cached_objective(part, temperature)
        return
    if type(objective) is NextTokenCE:
        return
    if type(objective) is not TokenKL or objective.direction != "forward":
        raise ValueError(_refusal(objective))
    wanted = objective.temperature
    if isinstance(wanted, Schedule) or abs(float(wanted) - float(temperature)) > 1e-12:
        raise ValueError(
            f"TokenKL's temperature ({wanted!r}) differs from the teacher cache's ({temperature}); the cache holds the "
            "teacher's distribution at one fixed temperature: build it at TokenKL's temperature (no schedule)"
        )


def cached_terms(
    objective: Objective,
    student_logits: Tensor,
    labels: Tensor,
    logprobs: Tensor,
    ids: Tensor,
    temperature: float,
    *,
    epoch: int = 0,
    global_step: int = 0,
) -> list[LossTerm]:
    """The terms of ``objective`` with the teacher's side read from the cache (``logprobs``, ``ids`` ``[B, T, k]``).

    A forward :class:`~kdlight.objectives.lm.TokenKL` becomes ``topk_forward_kl`` under the same
    name and weight; :class:`~kdlight.objectives.lm.NextTokenCE` is computed as usual; a
    :class:`~kdlight.objectives.Composite` of those keeps its scales. ``epoch`` / ``global_step``
    resolve scheduled weights. Anything else is refused in one line."""
    check_cached_objective(objective, temperature)
    step = DistillStep(
        inputs=labels,
        target=None,
        student_logits=student_logits,
        teacher_logits=student_logits.new_empty(0),  # never read: the cache stands in for the teacher
        epoch=epoch,
        global_step=global_step,
        labels=labels,
    )
    return _terms(objective, step, logprobs, ids)


def _terms(objective: Objective, step: DistillStep, logprobs: Tensor, ids: Tensor) -> list[LossTerm]:
    if isinstance(objective, Composite):
        terms: list[LossTerm] = []
        for part, factor in zip(objective.parts, objective.scale):
            terms += [
                LossTerm(t.name, t.value, t.weight * factor, t.scheduled, t.samples)
                for t in _terms(part, step, logprobs, ids)
            ]
        names = [t.name for t in terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Composite objective has duplicate term names {duplicates}; each term must appear once")
        return terms
    if isinstance(objective, NextTokenCE):
        return objective(step)
    options = objective.options(step)  # forward TokenKL (checked): labels, temperature, chunk_size
    value = topk_forward_kl(step.student_logits, logprobs, ids, **options)
    return [objective.term("fkl", value, objective.weight, step)]
