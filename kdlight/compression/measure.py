"""What compression buys: parameter counts, size on disk and CPU latency of a model.

Every function reads a model as it would ship:

- weights pruned with :mod:`torch.nn.utils.prune` (``weight_orig`` * ``weight_mask``) or with
  :mod:`torch.nn.utils.parametrize` count and are stored as their effective weight, once;
- quantised weights (torchao tensor subclasses such as ``Int8Tensor``) count by their dequantised
  values and are stored as torchao stores them (int8 data plus scales).
"""

from __future__ import annotations

import gzip
import io
import statistics
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

_PRUNE_SUFFIX, _MASK_SUFFIX = "_orig", "_mask"


def _plain(tensor: Tensor) -> Tensor:
    """A plain dense tensor holding ``tensor``'s values (dequantised for tensor subclasses)."""
    if type(tensor) not in (Tensor, nn.Parameter) and hasattr(tensor, "dequantize"):
        return tensor.dequantize()
    return tensor.detach()


def effective_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters as its forward uses them, by name: a pruned or parametrized weight
    appears once, as its effective value (``weight``), instead of its original and mask."""
    out: dict[str, Tensor] = {}
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its ``original`` is read through the parametrized parent below
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                out[dot + name] = _plain(getattr(module, name))
        for name, param in module.named_parameters(recurse=False):
            base = name.removesuffix(_PRUNE_SUFFIX)
            if name.endswith(_PRUNE_SUFFIX) and hasattr(module, base + _MASK_SUFFIX):
                out[dot + base] = _plain(getattr(module, base))  # torch.nn.utils.prune: orig * mask
            else:
                out[dot + name] = _plain(param)
    return out


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(nonzero, total)`` effective parameters of ``model`` (see :func:`effective_parameters`)."""
    values = effective_parameters(model).values()
    nonzero = sum(int(torch.count_nonzero(v)) for v in values)
    return nonzero, sum(v.numel() for v in values)


def shipped_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with pruning re-parametrisations folded: ``weight_orig`` and
    ``weight_mask`` become one dense ``weight`` (zeros stored as zeros), as
    ``torch.nn.utils.prune.remove`` would leave it; parametrizations likewise."""
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        base = key.removesuffix(_PRUNE_SUFFIX)
        if key.endswith(_PRUNE_SUFFIX) and base + _MASK_SUFFIX in state:
            out[base] = value * state[base + _MASK_SUFFIX]
        elif key.endswith(_MASK_SUFFIX) and key.removesuffix(_MASK_SUFFIX) + _PRUNE_SUFFIX in state:
            continue
        elif "parametrizations" in key.split("."):
            continue  # added below from the effective parameters
        else:
            out[key] = value
    params = effective_parameters(model)
    out.update({name: params[name] for name in params if name not in out and name not in state})
    return out


def size_on_disk(model: nn.Module, compressed: bool = False) -> int:
    """Bytes of ``torch.save(shipped_state_dict(model))``: sparse weights stored densely count as
    dense. With ``compressed=True``, the bytes of that file gzipped (level 6), where runs of zeros
    shrink, so unstructured sparsity shows; random float weights barely compress."""
    buffer = io.BytesIO()
    torch.save(shipped_state_dict(model), buffer)
    data = buffer.getvalue()
    return len(gzip.compress(data, compresslevel=6, mtime=0)) if compressed else len(data)


def _batch_of(example: Tensor, size: int) -> Tensor:
    """``size`` rows drawn cyclically from ``example`` (token ids keep their integer dtype)."""
    return example[torch.arange(size) % len(example)]


def cpu_latency(
    model: nn.Module,
    example: Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 50,
    warmup: int = 10,
) -> dict[int, float]:
    """Median wall time in milliseconds of one forward of ``model`` on CPU per batch size.

    Batches are rows of ``example`` (``[N, ...]``) repeated cyclically to each size. Runs under
    ``torch.inference_mode`` in eval mode with one intra-op thread (restored afterwards, as is the
    model's training mode), after ``warmup`` untimed calls; each of ``repeats`` calls is timed.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"cpu_latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if example.ndim == 0 or len(example) == 0:
        raise ValueError(f"cpu_latency needs an example batch [N, ...] with N >= 1, got shape {tuple(example.shape)}")
    threads, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(1)
    model.eval()
    latency: dict[int, float] = {}
    try:
        with torch.inference_mode():
            for size in batch_sizes:
                batch = _batch_of(example.cpu(), size)
                for _ in range(warmup):
                    model(batch)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(batch)
                    times.append(time.perf_counter() - start)
                latency[size] = statistics.median(times) * 1000.0
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return latency
