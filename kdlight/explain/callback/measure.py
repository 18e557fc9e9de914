"""What the callback measures on the probes: maps, agreement, chance level, faithfulness,
localisation, stability, surrogate.

Text probes are scored on their real tokens only (:mod:`.tokens`): their maps are 0 at padding,
and every map metric sees each probe's unpadded positions (top-k out of them).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn

from kdlight.core.batch import Batch
from kdlight.core.datamodule import data_capabilities
from kdlight.core.modality import Modality
from kdlight.explain.attribution import AttributionConfig, attribute, baseline_kind, get_method
from kdlight.explain.callback.probes import Probes, gather_in_probe_order, global_mean, global_sum, probe_key
from kdlight.explain.callback.settings import attribution_config
from kdlight.explain.callback.tokens import real_tokens, top_k_of_real_tokens, update_on_real_tokens
from kdlight.explain.faithfulness import deletion_insertion_auc, infidelity_score
from kdlight.explain.metrics import AgreementCollection, AgreementMean, MetricSpec, PerClassAgreement, metric_spec
from kdlight.explain.surrogate import fit_surrogate
from kdlight.training.reinit import reinitialized

FAITHFULNESS_SCORES = ("deletion_auc", "insertion_auc", "infidelity")
#: the metric of the per-class table
PER_CLASS_METRIC = "rank_correlation"


class Measure:
    """Attribution maps of the probes and the scores computed from them, with the callback's settings.

    It keeps the metric objects (reset for each run) and the chance level of each method and
    probe set (computed once; :meth:`forget` drops it when the models change). ``specs``: the
    agreement metrics (those with ``has_chance`` also get a chance level); ``stability``: the
    options of the ``sensitivity_max`` and ``self_agreement`` metrics (``None``: not measured).
    """

    def __init__(
        self,
        method_args: dict[str, dict[str, Any]],
        seed: int,
        batch_size: int,
        k: int,
        specs: list[MetricSpec],
        stability: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.method_args, self.seed, self.batch_size, self.k = method_args, seed, batch_size, k
        self.specs, self.stability_options = list(specs), stability
        self._chance: dict[tuple[str, str], dict[str, float]] = {}
        self._metrics: dict[tuple, tuple[AgreementCollection, PerClassAgreement]] = {}
        self._warned_nonfinite = False

    def forget(self) -> None:
        """Drop the chance levels (they belong to the models served so far)."""
        self._chance.clear()

    def config(self, method: str, role: str) -> AttributionConfig:
        """The attribution settings of ``method`` for the ``role`` (teacher / student) model."""
        return attribution_config(self.method_args, method, role, self.seed)

    def probes(
        self,
        trainer: Trainer,
        teacher: nn.Module,
        student: nn.Module,
        batch: Batch,
        target: str,
        methods: list[str],
        split: str,
    ) -> Probes:
        """The probes of ``batch`` (on the models' device) with both models' logits, the class
        explained (``target``: whose prediction, or the label), the data module's modality, the
        training inputs where a method's baselines need them, the ground truth of ``split`` and,
        for text, the real tokens (checked against the batch's ``attention_mask``)."""
        x, y = batch.inputs, batch.target
        data = data_capabilities(trainer.datamodule)
        modality = data.modality if data.modality is not None else Modality.for_inputs(x, data.feature_names)
        needed = any(baseline_kind(self.config(m, "teacher"), True) in ("mean", "sample") for m in methods)
        train_inputs = data.train_inputs() if needed else None
        train_inputs = None if train_inputs is None else train_inputs.to(x.device)
        t_logits, s_logits = self._predict(teacher, x), self._predict(student, x)
        explained = {"teacher": t_logits.argmax(-1), "student": s_logits.argmax(-1), "label": y}[target]
        key = probe_key(x, explained)
        masks = _ground_truth(trainer, split, batch.index, x.device)
        valid = real_tokens(modality, x, batch.attention_mask)
        return Probes(x, y, t_logits, s_logits, explained, train_inputs, key, modality, batch.index, masks, valid)

    @torch.no_grad()
    def _predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return torch.cat([model(xb) for xb in x.split(self.batch_size)])

    def maps(self, method: str, role: str, model: nn.Module, probes: Probes) -> Tensor:
        """``model``'s maps of the probes, ``batch_size`` probes per call (0 at padding)."""
        maps = self.explainer(method, role, model, probes)(probes.inputs, probes.target)
        return maps if probes.valid is None else maps.masked_fill(~probes.valid, 0.0)

    def explainer(self, method: str, role: str, model: nn.Module, probes: Probes) -> Callable[[Tensor, Tensor], Tensor]:
        """``explain(inputs, target) -> maps`` of ``model`` with ``method``'s settings for ``role``
        and the probes' modality and training inputs, ``batch_size`` inputs per call."""
        config = self.config(method, role)

        def explain(inputs: Tensor, target: Tensor) -> Tensor:
            batches = zip(inputs.split(self.batch_size), target.split(self.batch_size))
            return torch.cat(
                [
                    attribute(model, xb, tb, config, train_inputs=probes.train_inputs, modality=probes.modality)
                    for xb, tb in batches
                ]
            )

        return explain

    def faithfulness(self, method: str, model: nn.Module, probes: Probes, maps: Tensor) -> dict[str, Tensor]:
        """Per-probe deletion/insertion AUC and infidelity of ``model``'s own maps (NaN where the
        map is not finite; infidelity NaN for token ids, which take no noise)."""
        x = probes.inputs
        finite = torch.isfinite(maps.flatten(1)).all(1)
        scores = {name: torch.full((len(x),), float("nan"), device=x.device) for name in FAITHFULNESS_SCORES}
        if finite.any():
            xs, ms, ts = x[finite], maps[finite], probes.target[finite]
            deletion, insertion = deletion_insertion_auc(model, xs, ms, ts, modality=probes.modality)
            computed = {"deletion_auc": deletion, "insertion_auc": insertion}
            if x.is_floating_point():  # noise cannot be added to token ids: NaN, logged as such
                multiply = not get_method(method).local  # local maps (gradients): additive perturbations
                computed["infidelity"] = infidelity_score(
                    model, xs, ms, ts, seed=self.seed, multiply_by_inputs=multiply
                )
            for name, values in computed.items():
                scores[name][finite] = values.float()
        return scores

    def finite(self, method: str, t_maps: Tensor, s_maps: Tensor) -> Tensor:
        """Probes whose two maps are finite; warns once per callback when some are not."""
        ok = torch.isfinite(t_maps.flatten(1)).all(1) & torch.isfinite(s_maps.flatten(1)).all(1)
        if not bool(ok.all()) and not self._warned_nonfinite:
            warnings.warn(
                f"{int((~ok).sum())} probe(s) got NaN/infinite {method} attributions and are skipped "
                "(counted in .../nonfinite); training continues",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned_nonfinite = True
        return ok

    def agreement(
        self, method: str, probes: Probes, t_maps: Tensor, s_maps: Tensor, ok: Tensor
    ) -> tuple[dict[str, float], PerClassAgreement]:
        """The agreement metrics over the probes ``ok`` (synced over ranks), and the per-class
        metric by label, to be tabled."""
        key = (method, self.k, probes.teacher_logits.shape[-1], probes.valid is not None)
        if key not in self._metrics:  # built once, reset for each run
            self._metrics[key] = (
                AgreementCollection(k=self.k, names=self._specs(self.specs, probes)),
                PerClassAgreement(PER_CLASS_METRIC, key[2]),
            )
        metrics, per_class = (m.to(t_maps.device) for m in self._metrics[key])
        metrics.reset(), per_class.reset()
        update_on_real_tokens(metrics, (s_maps, t_maps), probes.valid, ok)
        update_on_real_tokens(per_class, (s_maps, t_maps), probes.valid, ok, per_probe=(probes.labels,))
        return {name: float(value) for name, value in metrics.compute().items()}, per_class

    def chance_level(
        self, method: str, student: nn.Module, probes: Probes, t_maps: Tensor, ok: Tensor
    ) -> dict[str, float]:
        """Agreement of the teacher with a freshly initialised copy of the student (once per method
        and probe set).

        Some metrics are far from 0 for unrelated models: methods that multiply by the input
        (integrated gradients, input x gradient, SHAP) give zero attribution wherever the input
        equals the baseline, so rank correlation of |attribution| mostly measures the shared input
        support (about 0.9 for an untrained student on digits). This floor puts curves in context.
        """
        key = (method, probes.key)
        chance_specs = [spec for spec in self.specs if spec.has_chance]
        if not chance_specs:
            return {}
        if key not in self._chance:
            r_maps = self.maps(method, "student", reinitialized(student, self.seed), probes)
            ok = ok & torch.isfinite(r_maps.flatten(1)).all(1)
            metrics = AgreementCollection(k=self.k, names=self._specs(chance_specs, probes)).to(t_maps.device)
            update_on_real_tokens(metrics, (r_maps, t_maps), probes.valid, ok)
            self._chance[key] = {name: float(value) for name, value in metrics.compute().items()}
        return self._chance[key]

    def localisation(self, maps: dict[str, Tensor], masks: Tensor, valid: Tensor | None = None) -> dict[str, float]:
        """``{role}_localisation_mass`` and ``{role}_localisation_topk`` (top ``k``) of each role's
        ``maps`` against the ground-truth ``masks`` (synced over ranks; probes without ground
        truth or with a non-finite map are skipped; text: on the ``valid`` real tokens only)."""
        scores = {}
        topk = metric_spec("localisation_topk")
        topk = topk if valid is None else top_k_of_real_tokens(topk)
        for role, role_maps in maps.items():
            for metric in (AgreementMean("localisation_mass"), AgreementMean(topk, k=self.k)):
                metric = metric.to(role_maps.device)
                update_on_real_tokens(metric, (role_maps, masks), valid)
                scores[f"{role}_{metric.name}"] = float(metric.compute())
        return scores

    def stability(self, method: str, models: dict[str, nn.Module], probes: Probes) -> dict[str, float]:
        """``{role}_sensitivity_max`` and ``{role}_self_agreement`` of each role model's ``method``
        maps at the probes (synced over ranks). The noise depends only on the stability seed and
        the probes, so every model sees the same draws."""
        scores = {}
        for role, model in models.items():
            explain = self.explainer(method, role, model, probes)
            for name, options in (self.stability_options or {}).items():
                metric = AgreementMean(self._stability_spec(name, options), options=options).to(probes.inputs.device)
                metric.update(explain, probes.inputs, probes.target)
                scores[f"{role}_{name}"] = float(metric.compute())
        return scores

    @staticmethod
    def _specs(specs: list[MetricSpec], probes: Probes) -> list[MetricSpec]:
        """The metrics as scored on ``probes``: top-k out of each text probe's real tokens."""
        return specs if probes.valid is None else [top_k_of_real_tokens(spec) for spec in specs]

    def _stability_spec(self, name: str, options: dict[str, Any]) -> MetricSpec:
        """The registered stability metric ``name``; ``self_agreement`` by a top-k metric takes the
        callback's ``k`` (bound here: ``k`` is not an option of the metric classes)."""
        spec = metric_spec(name)
        if name == "self_agreement" and metric_spec(options.get("agreement", "rank_correlation")).uses_k:
            return dataclasses.replace(spec, fn=functools.partial(spec.fn, k=self.k))
        return spec

    def surrogate(self, trainer: Trainer, probes: Probes) -> dict[str, float]:
        """Fidelity and size of one decision tree of the student on every rank's probes, in probe
        order (as in a single process)."""
        inputs = gather_in_probe_order(trainer, probes.inputs.flatten(1))
        predictions = gather_in_probe_order(trainer, probes.student_logits.argmax(-1))
        report = fit_surrogate(inputs.cpu(), predictions.cpu(), seed=self.seed)
        return {"fidelity": report.fidelity, "leaves": float(report.n_leaves)}


def _ground_truth(trainer: Trainer, split: str, indices: Tensor, device: torch.device) -> Tensor | None:
    """The probes' ground-truth relevant features (boolean masks), where the data module knows
    them (``ground_truth_masks``) for some probe of some rank; ``None`` otherwise."""
    masks = data_capabilities(trainer.datamodule).ground_truth_masks(split, indices)
    if masks is None:
        return None
    masks = masks.to(device)  # before the reduction: NCCL reduces device tensors only
    return masks if global_sum(trainer, masks.flatten(1).any(1)) else None  # None: e.g. data without the cue


def faithfulness_scalars(
    trainer: Trainer, teacher: dict[str, Tensor], student: dict[str, Tensor], ok: Tensor
) -> dict[str, float]:
    """``{role}_{score}``: the mean of each per-probe score over the probes both maps are finite for."""
    return {
        f"{role}_{name}": global_mean(trainer, scores[name][ok])
        for role, scores in (("teacher", teacher), ("student", student))
        for name in FAITHFULNESS_SCORES
    }
