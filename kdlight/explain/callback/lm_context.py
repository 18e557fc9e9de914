"""ContextAttribution: does a distilled LM predict the next token from the same context as its teacher?

For a few fixed validation sequences and chosen positions, teacher and student attribute the score
of the teacher's predicted next token to the context tokens
(:func:`kdlight.explain.attribution.context_tokens.context_attributions`); the two maps are compared
with the agreement metrics of :mod:`kdlight.explain.metrics` on the context positions only, next to
the same agreement for a freshly initialised student (the chance level).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from kdlight.compression.twin import differentiable
from kdlight.core.batch import as_batch, collate
from kdlight.core.datamodule import data_capabilities
from kdlight.core.modality import Text
from kdlight.data.lm import IGNORE_INDEX, next_token_labels
from kdlight.explain.attribution.context import eval_mode
from kdlight.explain.attribution.context_tokens import check_context_method, context_attributions, context_mask
from kdlight.explain.callback.outputs import log_scalars
from kdlight.explain.callback.probes import explained_epoch, probe_key, split_dataset
from kdlight.explain.callback.settings import metric_specs
from kdlight.explain.callback.tokens import real_token_groups, top_k_of_real_tokens
from kdlight.explain.metrics import MetricSpec
from kdlight.explain.plots import explanation_html, explanation_image
from kdlight.reporting.artifacts import log_html, log_image, log_table
from kdlight.training.reinit import reinitialized

__all__ = ["ContextAttribution", "context_scores"]

PREFIX = "explain_lm"


def context_scores(specs: list[MetricSpec], student_maps: Tensor, teacher_maps: Tensor, context: Tensor, k: int):
    """Per-row scores ``{metric: [M]}`` of each metric on the row's ``context`` positions only (top-k
    out of them: ``min(k, L)`` for ``L`` context tokens); NaN for a row without context."""
    scores = {spec.name: torch.full((len(context),), math.nan) for spec in specs}
    for rows, columns in real_token_groups(context):
        s, t = student_maps[rows].gather(1, columns), teacher_maps[rows].gather(1, columns)
        for spec in specs:
            value = top_k_of_real_tokens(spec).score(s, t, top_k=k if spec.uses_k else None)
            scores[spec.name][rows.cpu()] = value.float().cpu()
    return scores


def _finite_mean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _shown(token: str) -> str:
    return token if token.isprintable() else token.encode("unicode_escape").decode("ascii")


class ContextAttribution(Callback):
    """Attribute teacher's and student's next-token predictions to the context tokens, and compare.

    On validation epochs (every ``every_n_epochs`` and the last of ``fit``; every ``validate``), for
    the first ``num_probes`` validation sequences and each chosen position ``p``, both models explain
    the log-probability of the teacher's predicted token at ``p`` by tokens ``0..p`` (``method``, on the
    embeddings; baseline tokens = the data's ``Text.reference_id``). Logged, with ``<m>`` = ``method``:

    * ``{split}/explain_lm/<m>/{metric}``: the mean over (probe, position) pairs of each agreement
      metric (default: ExplanationAgreement's, every registered map metric; top-k ones with
      ``top_k``, at most the context length) on the context positions only;
    * ``{split}/explain_lm/<m>/chance_{metric}``: the same for the teacher against a re-initialised
      student (:func:`kdlight.training.reinit.reinitialized`), computed once per fit;
    * ``{split}/explain_lm/<m>/nonfinite`` (pairs skipped), ``{split}/explain_lm/num_positions`` and
      ``{split}/explain_lm/prediction_agreement`` (teacher and student top-1 agree at the positions);
    * a table ``{split}/explain_lm/<m>/per_position`` (each pair's scores and both predicted tokens)
      and, with ``log_figures``, ``.../heatmaps`` (PNG) and ``.../heatmaps_html``: the context of
      ``num_figures`` pairs shaded by the teacher's (row 1) and student's (row 2) map. In ``fit`` the
      table and figures of the last explained epoch are written at the end of ``fit``.

    ``positions``: ``"last"`` (each probe's last token that has a label), or indices into each
    probe: ``t >= 0`` from its start, ``t < 0`` back from its last labelled token (``-1`` = ``"last"``);
    a pair whose index falls on padding is skipped. Every rank computes the same values on the same
    probes (no collective), rank zero writes the figures: safe under DDP.
    """

    def __init__(
        self,
        num_probes: int = 16,
        positions: str | list[int] = "last",
        method: str = "integrated_gradients",
        n_steps: int = 16,
        metrics: list[str] | None = None,
        top_k: int = 5,
        every_n_epochs: int = 1,
        log_figures: bool = True,
        num_figures: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        try:
            check_context_method(method)
            specs = metric_specs(metrics)
        except ValueError as err:
            raise ValueError(f"ContextAttribution: {str(err).removeprefix('ExplanationAgreement ')}") from None
        counts = dict(num_probes=num_probes, n_steps=n_steps, top_k=top_k, every_n_epochs=every_n_epochs)
        for name, value in (counts | {"num_figures": num_figures}).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ContextAttribution {name} must be an integer >= 1, got {value!r}")
        ints = isinstance(positions, (list, tuple)) and all(
            isinstance(p, int) and not isinstance(p, bool) for p in positions
        )
        if positions != "last" and not (ints and positions):
            raise ValueError(
                f"ContextAttribution positions must be 'last' or a non-empty list of ints, got {positions!r}"
            )
        self.num_probes, self.method, self.n_steps, self.top_k = num_probes, method, n_steps, top_k
        self.positions = positions if positions == "last" else [int(p) for p in positions]
        self.every_n_epochs, self.log_figures, self.num_figures, self.seed = (
            every_n_epochs,
            log_figures,
            num_figures,
            seed,
        )
        self.specs = specs
        self.metrics = [spec.name for spec in specs]
        self._chance: dict[str, dict[str, float]] = {}  # probe key -> chance level, for one fit
        self._models: tuple[int, int] | None = None
        self._pending: dict[str, Any] | None = None  # the last fit run's table and figures
        self.last_results: dict[str, float] = {}

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not (hasattr(pl_module, "teacher") and hasattr(pl_module, "student")):
            raise ValueError(
                "ContextAttribution needs a module with a teacher and a student "
                f"(kdlight.training.LMDistillationModule), got {type(pl_module).__name__}"
            )
        modality = data_capabilities(trainer.datamodule).modality
        if not isinstance(modality, Text):
            where = type(trainer.datamodule).__name__ if trainer.datamodule is not None else "no datamodule"
            raise ValueError(
                f"ContextAttribution needs token data: a datamodule whose modality is kdlight.core.modality.Text "
                f"(e.g. PythonSourceCorpus), got {where} with modality {type(modality).__name__}"
            )
        self._check_positions(data_capabilities(trainer.datamodule).input_shape)
        models = (id(pl_module.teacher), id(pl_module.student))
        if models != self._models:
            self._chance.clear()
        self._models = models

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._chance.clear()  # once per fit

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if explained_epoch(trainer, self.every_n_epochs):
            self.run(trainer, pl_module, "val")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None and trainer.is_global_zero:
            self._log_artifacts(trainer, **self._pending)
        self._pending = None

    # -- the work ----------------------------------------------------------------------------
    def _check_positions(self, input_shape: tuple[int, ...] | None) -> None:
        if self.positions == "last" or not input_shape:
            return
        length = input_shape[0]
        outside = [p for p in self.positions if not -length <= p < length]
        if outside:
            raise ValueError(
                f"ContextAttribution positions {outside} are outside the sequence of {length} tokens; "
                f"use 0..{length - 1} (from the start) or -{length}..-1 (back from the last labelled token)"
            )

    def probes(self, trainer: Trainer, split: str) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(ids [n, T], rows [M], positions [M])``: the first ``num_probes`` sequences of ``split`` and
        the (probe, position) pairs explained; ``None`` without data."""
        dataset = split_dataset(trainer, split)
        if dataset is None or not len(dataset):
            return None
        batch = as_batch(collate([dataset[i] for i in range(min(self.num_probes, len(dataset)))]))
        modality = data_capabilities(trainer.datamodule).modality
        ids = batch.inputs.clone()
        modality.check_ids(ids, batch.attention_mask)
        self._check_positions(tuple(ids.shape[1:]))
        labels = batch.extras.get("labels")
        labels = next_token_labels(ids, modality.pad_id) if labels is None else labels
        columns = torch.arange(ids.shape[1])
        last = torch.where(labels != IGNORE_INDEX, columns, -1).amax(1)  # -1: nothing labelled
        wanted = [-1] if self.positions == "last" else self.positions
        at = torch.stack([torch.full_like(last, p) if p >= 0 else last + 1 + p for p in wanted], 1)  # [n, P]
        rows = torch.arange(len(ids)).view(-1, 1).expand_as(at)
        inside = (at >= 0) & (last.view(-1, 1) >= 0)
        keep = inside & (labels[rows, at.clamp(0, ids.shape[1] - 1)] != IGNORE_INDEX)  # predicts a real token
        return ids, rows[keep], at[keep]

    def run(self, trainer: Trainer, pl_module: LightningModule, split: str) -> dict[str, float]:
        """Explain, measure and log; returns the logged scalars (also kept in ``last_results``)."""
        found = self.probes(trainer, split)
        if found is None:
            return {}
        modality, epoch = data_capabilities(trainer.datamodule).modality, trainer.current_epoch
        teacher, student = pl_module.teacher, differentiable(pl_module.student)
        ids, rows, positions = (t.to(pl_module.device) for t in found)
        with torch.inference_mode(False), torch.no_grad(), eval_mode(teacher), eval_mode(student):
            t_next = teacher(ids)[rows, positions]
            s_next = student(ids)[rows, positions]
        x, targets = ids[rows], t_next.argmax(-1)
        reference = modality.reference_id
        t_maps = self._attributions(teacher, x, positions, targets, reference)
        s_maps = self._attributions(student, x, positions, targets, reference)
        context = context_mask(x, positions, modality.pad_id)
        scores = context_scores(self.specs, s_maps, t_maps, context, self.top_k)
        key = f"{split}/{PREFIX}/{self.method}"
        results = {f"{key}/{name}": _finite_mean(values) for name, values in scores.items()}
        chance = self._chance_level(student, x, positions, targets, t_maps, context, reference)
        results |= {f"{key}/chance_{name}": value for name, value in chance.items()}
        results[f"{key}/nonfinite"] = float((~torch.isfinite(t_maps).all(1) | ~torch.isfinite(s_maps).all(1)).sum())
        results[f"{split}/{PREFIX}/num_positions"] = float(len(rows))
        results[f"{split}/{PREFIX}/prediction_agreement"] = _finite_mean((targets == s_next.argmax(-1)).float().cpu())
        log_scalars(trainer, pl_module, results, epoch)
        self.last_results = results
        table = self._table(modality, found[1], found[2], targets.cpu(), s_next.argmax(-1).cpu(), scores)
        shown = min(self.num_figures, len(rows)) if self.log_figures else 0
        drawn = torch.where(context, x, modality.pad_id)[:shown].cpu()  # the context only
        artifacts = dict(
            key=key, epoch=epoch, table=table, modality=modality, inputs=drawn,
            maps=(t_maps[:shown].cpu(), s_maps[:shown].cpu()), labels=self._labels(table[:shown]),
            positions=positions[:shown].cpu(),
        )  # fmt: skip
        if trainer.state.fn == "fit":
            self._pending = artifacts
        elif trainer.is_global_zero:
            self._log_artifacts(trainer, **artifacts)
        return results

    def _attributions(self, model, x: Tensor, positions: Tensor, targets: Tensor, reference_id: int) -> Tensor:
        return context_attributions(model, x, positions, targets, self.method, self.n_steps, reference_id)

    def _chance_level(
        self, student, x: Tensor, positions: Tensor, targets: Tensor, t_maps: Tensor, context: Tensor, reference_id: int
    ) -> dict[str, float]:
        """Agreement of the teacher with a re-initialised student on these pairs (once per fit)."""
        specs = [spec for spec in self.specs if spec.has_chance]
        key = probe_key(x, targets)
        if specs and key not in self._chance:
            r_maps = self._attributions(reinitialized(student, self.seed), x, positions, targets, reference_id)
            scores = context_scores(specs, r_maps, t_maps, context, self.top_k)
            self._chance[key] = {name: _finite_mean(values) for name, values in scores.items()}
        return self._chance.get(key, {})

    @staticmethod
    def _table(
        modality: Text, probe_rows: Tensor, positions: Tensor, teacher: Tensor, student: Tensor, scores: dict
    ) -> pd.DataFrame:
        """One row per (probe, position) pair: where, both predicted tokens, each metric's score."""

        def token(i: int) -> str:
            return _shown(modality.tokens[i]) if modality.tokens is not None else str(i)

        frame = pd.DataFrame(
            {
                "probe": probe_rows.tolist(),
                "position": positions.tolist(),
                "teacher_token": [token(int(i)) for i in teacher],
                "student_token": [token(int(i)) for i in student],
            }
        )
        return frame.assign(**{name: values.tolist() for name, values in scores.items()})

    @staticmethod
    def _labels(table: pd.DataFrame) -> list[str]:
        return [
            f"probe {r.probe} @{r.position}: next teacher {r.teacher_token!r} student {r.student_token!r}"
            for r in table.itertuples()
        ]

    @staticmethod
    def _log_artifacts(trainer: Trainer, key, epoch, table, modality, inputs, maps, labels, positions) -> None:
        """The per-pair table and, for the pairs kept, the context figure: PNG (the last
        :data:`FIGURE_WINDOW` tokens up to each position) and HTML (the whole context)."""
        log_table(trainer, f"{key}/per_position", table, epoch)
        if not len(inputs):
            return
        title = f"{key} context attribution (epoch {epoch})"
        width = min(FIGURE_WINDOW, inputs.shape[1])
        ids = context_window(inputs, positions, modality.pad_id, width)
        windows = [context_window(m, positions, 0.0, width) for m in maps]
        image = explanation_image(ids, *windows, labels=labels, title=title, modality=modality)
        log_image(trainer, f"{key}/heatmaps", image, epoch)
        page = explanation_html(inputs, *maps, labels=labels, title=title, modality=modality)
        log_html(trainer, f"{key}/heatmaps_html", page, epoch)


#: tokens of context drawn in the PNG figure, ending at the explained position
FIGURE_WINDOW = 48


def context_window(values: Tensor, positions: Tensor, fill: float, width: int = FIGURE_WINDOW) -> Tensor:
    """``[N, width]``: row ``i``'s last ``width`` entries up to and including ``positions[i]``,
    left-aligned and padded with ``fill`` (the predicting token always shows)."""
    out = torch.full((len(values), width), fill, dtype=values.dtype)
    for i, p in enumerate(positions.tolist()):
        start = max(0, p + 1 - width)
        out[i, : p + 1 - start] = values[i, start : p + 1]
    return out
