"""Errors kdlight raises for problems a user can fix, and the finite-loss guard."""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stops."""


def check_finite_loss(terms: dict[str, Tensor], epoch: int, step: int, since: int | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming every non-finite term (one host sync).

    ``since``: the values are sums over steps ``since..step`` (checked on logging steps only)."""
    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [f"{name}={value.item()}" for name, value in zip(terms, values) if not torch.isfinite(value)]
    where = f"step {step}" if since is None or since >= step else f"steps {since}-{step}"
    raise NonFiniteLossError(
        f"loss term {', '.join(bad)} at epoch {epoch}, {where}: training stopped; "
        "lower the learning rate, check the inputs for NaN, or use gradient_clip_val"
    )
