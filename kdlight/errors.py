"""Errors kdlight raises for problems a user can fix, and the finite-loss guard."""
from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stops."""


def check_finite_loss(terms: dict[str, Tensor], epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming every non-finite term (one host sync)."""
    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [f"{name}={value.item()}" for name, value in zip(terms, values) if not torch.isfinite(value)]
    raise NonFiniteLossError(
        f"loss term {', '.join(bad)} at epoch {epoch}, step {step}: training stopped; "
        "lower the learning rate, check the inputs for NaN, or use gradient_clip_val"
    )
