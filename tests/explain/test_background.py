"""kdlight.explain.background: the hook-free teacher copy and the low-priority thread."""
from __future__ import annotations

import os
import sys
import threading

import pytest
import torch
from torch import nn

from kdlight.explain.background import lowest_cpu_priority, unhooked_copy


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_copy_shares_weights_but_not_hooks_or_flags():
    model = _model().train()
    captured = []
    model[0].register_forward_hook(lambda module, args, out: captured.append(out))
    model[4].register_forward_pre_hook(lambda module, args: captured.append(args))
    clone = unhooked_copy(model)
    assert all(a is b for a, b in zip(clone.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(clone.buffers(), model.buffers()))
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    expected = model(x)
    captured.clear()
    torch.testing.assert_close(clone(x), expected)
    assert captured == []  # the copy's forward fires none of the model's hooks
    model(x)
    assert len(captured) == 2  # the model keeps its own
    model.train()
    assert not clone.training and not any(m.training for m in clone.modules())
    running = model[1].running_mean.clone()
    clone(torch.randn(3, 1, 8, 8))  # eval: the shared BatchNorm statistics are not updated
    torch.testing.assert_close(model[1].running_mean, running)


def test_no_copy_under_global_hooks():
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        assert unhooked_copy(_model()) is None
    finally:
        handle.remove()
    assert unhooked_copy(_model()) is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature")
def test_lowest_cpu_priority_applies_to_the_calling_thread_only():
    seen = []

    def job():
        lowest_cpu_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19
