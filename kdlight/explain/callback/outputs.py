"""What a run hands to the loggers: its scalars, and per method a per-class table and a heatmap figure
(for text also as an HTML page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from kdlight.core.modality import Modality
from kdlight.explain.callback.probes import Probes
from kdlight.explain.plots import explanation_html, explanation_image
from kdlight.reporting.artifacts import log_html, log_image, log_table


def log_scalars(trainer: Trainer, pl_module: LightningModule, scalars: dict[str, float], epoch: int) -> None:
    """Hand a run's (already synced) scalars to the loggers and to ``trainer.callback_metrics``.

    In ``validate``/``test`` through ``LightningModule.log``, so ``trainer.validate()``/``test()``
    return and print them. In ``fit`` straight to the loggers (rank zero) at the current global
    step, as the float64 values they are: the run may come from ``on_train_end`` (``fit`` stopped
    before a validation explained its final weights), where Lightning refuses ``log``, and it skips
    ``log``'s per-key bookkeeping, which counts against training.
    """
    if trainer.state.fn != "fit":
        for name, value in scalars.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=False)
        return
    trainer.callback_metrics.update({name: torch.tensor(value) for name, value in scalars.items()})
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics({**scalars, "epoch": epoch}, step=trainer.global_step)
            logger.save()


@dataclass
class MethodArtifacts:
    """One method's artifacts of one run: its per-class table and, for the heatmap figure, the
    first probes (inputs, labels, both models' logits and maps; none when no figure is drawn) and
    how to draw them (the data module's modality)."""

    epoch: int
    split: str
    method: str
    per_class: list[dict[str, Any]]
    inputs: Tensor
    labels: Tensor
    teacher_logits: Tensor
    student_logits: Tensor
    teacher_maps: Tensor
    student_maps: Tensor
    modality: Modality

    @classmethod
    def of(
        cls,
        epoch: int,
        split: str,
        method: str,
        per_class: list[dict[str, Any]],
        probes: Probes,
        teacher_maps: Tensor,
        student_maps: Tensor,
        shown: int,
    ) -> MethodArtifacts:
        """The artifacts of ``method``, keeping the first ``shown`` probes for the figure."""
        n = max(0, min(shown, len(probes.inputs)))
        return cls(
            epoch,
            split,
            method,
            per_class,
            probes.inputs[:n],
            probes.labels[:n],
            probes.teacher_logits[:n],
            probes.student_logits[:n],
            teacher_maps[:n],
            student_maps[:n],
            probes.modality,
        )

    def log(self, trainer: Trainer) -> None:
        """The table under ``{split}/explain/{method}/per_class`` and, when probes are kept, their
        figure under ``.../heatmaps``, drawn by the modality (a tabular one names the features; text
        shades its tokens, and its HTML page goes under ``.../heatmaps_html``)."""
        key = f"{self.split}/explain/{self.method}"
        log_table(trainer, f"{key}/per_class", pd.DataFrame(self.per_class), self.epoch)
        if not len(self.inputs):
            return
        labels = [
            f"y={int(y)} t={int(t.argmax())} s={int(s.argmax())}"
            for y, t, s in zip(self.labels, self.teacher_logits, self.student_logits)
        ]
        drawn = (self.inputs.cpu(), self.teacher_maps.cpu(), self.student_maps.cpu())
        title = f"{self.method} ({self.split}, epoch {self.epoch})"
        image = explanation_image(*drawn, labels=labels, title=title, modality=self.modality)
        log_image(trainer, f"{key}/heatmaps", image, self.epoch)
        if hasattr(self.modality, "explanation_html"):  # text: the shaded tokens, values on hover
            page = explanation_html(*drawn, labels=labels, title=title, modality=self.modality)
            log_html(trainer, f"{key}/heatmaps_html", page, self.epoch)
