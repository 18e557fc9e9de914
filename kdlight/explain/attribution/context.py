"""The one attribution context: how kdlight runs a model to explain or score it.

Shared by :func:`kdlight.explain.attribution.attribute` and :mod:`kdlight.explain.faithfulness`:

* :class:`Placement` -- the device and computation dtype (the model's device; float32 unless the
  model's floating parameters all share another dtype, e.g. ``bf16-true``) and how a tensor is
  put there: a detached, non-inference copy; floating tensors take the computation dtype,
  integer tensors (token ids) keep theirs.
* :func:`attribution_context` -- eval mode (every submodule's train/eval flag restored
  afterwards), inference mode off, gradients on or off, autocast off on the inputs' and the
  model's device, optionally a forked and seeded RNG (torch CPU and CUDA, numpy, ``random``) and,
  with gradients, strict deterministic algorithms relaxed to warnings on the main thread.
* :func:`as_target` -- one class index per input as a LongTensor ``[N]``; :func:`target_score` --
  the sum of each row's target logit (what gradient maps differentiate).
"""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Placement",
    "attribution_context",
    "eval_mode",
    "seeded",
    "no_autocast",
    "as_target",
    "target_score",
    "TargetLike",
]

TargetLike = int | Sequence[int] | Tensor


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype a model is run: ``device`` and the floating ``dtype``."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, model: nn.Module, fallback: torch.device) -> Placement:
        """The model's device (``fallback`` without parameters) and its computation dtype."""
        params = list(model.parameters())
        device = params[0].device if params else fallback
        dtypes = {p.dtype for p in params if p.is_floating_point()}
        return cls(device, dtypes.pop() if len(dtypes) == 1 else torch.float32)

    def put(self, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """A detached, non-inference copy on ``device`` (call with inference mode off); floating
        tensors in ``dtype`` (default the computation dtype), integer tensors unchanged."""
        t = t.detach()
        if t.is_floating_point():
            return t.to(device=self.device, dtype=dtype or self.dtype).clone()
        return t.to(device=self.device).clone()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule's own flag is restored afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def no_autocast(device_type: str) -> torch.autocast:
    """Autocast disabled on ``device_type`` (a type autocast does not know: on the CPU)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:
        return torch.autocast(device_type="cpu", enabled=False)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and ``device`` if CUDA), numpy and ``random``; restore them afterwards."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def _deterministic_warn_only() -> Iterator[None]:
    """Under ``Trainer(deterministic=True)`` some attribution kernels (DeepLift through max-pool
    uses max_unpool) have no deterministic implementation; warn instead of failing the run. Only
    on the main thread: the flag is process-wide, and training on the main thread must keep it
    (off the main thread such a kernel raises)."""
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    strict = strict and threading.current_thread() is threading.main_thread()
    if strict:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        if strict:
            torch.use_deterministic_algorithms(True)


@contextmanager
def attribution_context(
    model: nn.Module,
    devices: Sequence[torch.device],
    *,
    grad: bool,
    seed: int | None = None,
    quiet_hooks: bool = False,
) -> Iterator[None]:
    """Run ``model`` to explain (``grad=True``) or score (``grad=False``) it; see the module notes.

    ``devices``: where autocast is turned off (the inputs' and the model's). ``seed``: fork the
    RNGs and seed them (random methods); ``None`` leaves the RNGs alone. ``quiet_hooks``: silence
    Captum's hook warnings (methods that hook the model); off, the warning filters are left alone,
    which keeps pure calls thread-safe.
    """
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        for device_type in dict.fromkeys(d.type for d in devices):
            stack.enter_context(no_autocast(device_type))
        if grad:
            stack.enter_context(_deterministic_warn_only())
        stack.enter_context(eval_mode(model))
        if seed is not None:
            stack.enter_context(seeded(seed, devices[-1]))
        if quiet_hooks or seed is not None:
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks.*")
            warnings.filterwarnings("ignore", message=".*Input Tensor.*did not already require grad.*")
        yield


def as_target(target: TargetLike, n: int, device: torch.device) -> Tensor:
    """One class index per input: a LongTensor ``[N]`` on ``device`` (an int or one entry is
    repeated)."""
    if isinstance(target, bool) or not isinstance(target, (int, Sequence, Tensor)):
        raise ValueError(f"target must be an int, a sequence of ints or a LongTensor [N], got {type(target).__name__}")
    t = target.detach().clone() if isinstance(target, Tensor) else torch.as_tensor(target)
    t = t.to(device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must be an int or have one class index per input ({n}), got {t.numel()}")
    return t.clone()


def target_score(logits: Tensor, target: Tensor) -> Tensor:
    """Sum over the batch of each row's target logit (what the maps differentiate)."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits [N, classes], got shape {list(logits.shape)}")
    return logits.gather(1, target.view(-1, 1)).sum()
