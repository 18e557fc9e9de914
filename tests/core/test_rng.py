"""kdlight.core.rng: RNG states survive a weights-only checkpoint round trip."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from kdlight.core.rng import rng_state, set_rng_state


def _draws() -> tuple:
    return torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn()


def test_saved_state_replays_the_same_draws_after_a_weights_only_load():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    expected = _draws()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"])
    again = _draws()
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and expected[3] == again[3]
