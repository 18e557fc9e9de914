"""Per-position validation curves of a causal LM: token count, cross-entropy, KL and agreement by position.

:class:`PositionCurves` is a torchmetrics ``Metric`` whose states are per-position sums
(``dist_reduce_fx="sum"``), so under DDP every rank's counts are added before the curves are computed.
Position ``t`` is the position that predicts token ``t + 1`` (the logits' index).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import Metric

__all__ = ["PositionCurves", "log_position_table", "TABLE_COLUMNS"]

#: the columns of the ``<split>/per_position`` table, in order
TABLE_COLUMNS = ("position", "tokens", "student_ce", "student_ppl", "kl", "agreement")


class PositionCurves(Metric):
    """Sums per position ``t`` over an epoch: counted tokens, the student's cross-entropy and, with
    ``teacher=True``, token ``KL(p_t || p_s)`` and top-1 agreement with the teacher.

    ``length`` sizes the states (the data's ``max_length``); a longer batch grows them (under DDP
    give the data a ``max_length`` so every rank holds the same size). Sums are float64.
    ``compute()`` returns 1-D CPU tensors over the positions that counted at least one token:
    ``position``, ``tokens``, ``student_ce`` (mean), ``student_ppl`` (its exp) and, with a teacher,
    ``kl`` (mean) and ``agreement`` (fraction).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, length: int, teacher: bool = False) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"PositionCurves needs length >= 1 (the sequence length), got {length}")
        self.teacher = teacher
        self.sums = ("ce", "kl", "agree") if teacher else ("ce",)
        for name in ("tokens", *self.sums):
            self.add_state(name, default=torch.zeros(length, dtype=torch.float64), dist_reduce_fx="sum")

    def _grow(self, length: int) -> None:
        for name in ("tokens", *self.sums):
            state = getattr(self, name)
            if len(state) < length:
                setattr(self, name, torch.cat([state, state.new_zeros(length - len(state))]))

    def update(self, counted: Tensor, ce: Tensor, kl: Tensor | None = None, agree: Tensor | None = None) -> None:
        """Add one batch: ``counted`` bool ``[B, T]``; per-token ``ce`` (and ``kl``, ``agree``) ``[B, T]``,
        any value where a position does not count (it is masked out here)."""
        values = {"ce": ce, "kl": kl, "agree": agree}
        if self.teacher and (kl is None or agree is None):
            raise ValueError("PositionCurves(teacher=True) needs the per-token kl and agree of every batch")
        self._grow(counted.shape[1])
        weights = counted.to(torch.float64)
        length = counted.shape[1]
        self.tokens[:length] += weights.sum(0)
        for name in self.sums:
            value = values[name].detach().to(torch.float64)
            getattr(self, name)[:length] += torch.where(counted, value, torch.zeros_like(value)).sum(0)

    def compute(self) -> dict[str, Tensor]:
        tokens = self.tokens.detach().cpu()
        keep = tokens > 0
        mean = {name: getattr(self, name).detach().cpu()[keep] / tokens[keep] for name in self.sums}
        curves = {
            "position": torch.arange(len(tokens))[keep],
            "tokens": tokens[keep],
            "student_ce": mean["ce"],
            "student_ppl": mean["ce"].exp(),
        }
        if self.teacher:
            curves["kl"], curves["agreement"] = mean["kl"], mean["agree"]
        return curves


def log_position_table(trainer: Trainer, key: str, curves: dict[str, Tensor]) -> None:
    """Log ``curves`` as a table under ``key`` to the loggers that take tables (W&B: a ``wandb.Table``
    with the columns of :data:`TABLE_COLUMNS`, absent ones as NaN, logged with the epoch like
    ``kdlight.reporting.artifacts.log_table``); other loggers get nothing (read ``module.per_position``)."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers or trainer.sanity_checking:
        return
    import wandb

    length = len(curves["position"])
    columns = [curves[name].tolist() if name in curves else [math.nan] * length for name in TABLE_COLUMNS]
    rows = [[int(row[0]), int(row[1]), *row[2:]] for row in zip(*columns)]
    for logger in loggers:
        logger.experiment.log(
            {
                key: wandb.Table(columns=list(TABLE_COLUMNS), data=rows),
                "epoch": trainer.current_epoch,
                "trainer/global_step": trainer.global_step,
            }
        )
