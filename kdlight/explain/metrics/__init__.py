"""The metric registry, and torchmetrics classes that average a metric's per-sample scores.

A metric is declared once, as a :class:`MetricSpec`: its name, its per-sample function, whether
higher is better, whether it takes a top-k size ``k``, whether the callback logs a ``chance_``
twin for it, and what it compares (:data:`COMPARES`). :func:`register_metric` adds it to
:data:`METRICS` next to its definition; every module of this package (``stability``,
``localisation``, ...) is imported on the first lookup, so adding a metric is one new file here
(plus its test). A metric outside kdlight is named by its import path,
``"my_pkg.mod.MY_METRIC"``: a :class:`MetricSpec`, or any object (e.g. a class) with the same
attributes (``name``, ``fn`` -- a ``staticmethod`` on a class -- and optionally the others).

Accumulation: every metric keeps a ``sum`` and a ``count`` of the finite per-sample values, both
reduced with ``dist_reduce_fx="sum"``, so under DDP :meth:`compute` returns exactly the mean over
all samples of all ranks (not a mean of per-rank means, which is wrong for uneven shards).
Per-sample values that are not finite (e.g. from NaN / inf attributions, or an empty
ground-truth mask) are not added; they are counted in the ``skipped`` state instead.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from kdlight.functional import agreement as F

__all__ = [
    "COMPARES",
    "METRICS",
    "MetricSpec",
    "register_metric",
    "metric_spec",
    "metric_names",
    "AgreementMean",
    "PerClassAgreement",
    "AgreementCollection",
]

#: what a metric compares, i.e. the arguments of ``update`` (and of its function, before ``k``)
COMPARES: dict[str, str] = {
    "maps": "two models' attribution maps: update(student_maps, teacher_maps)",
    "logits": "two models' predictions: update(student_logits, teacher_logits)",
    "mask": "one model's maps against ground-truth relevant features: update(maps, masks)",
    "explainer": "one model's explanation at nearby inputs: update(explain, inputs, target)",
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class MetricSpec:
    """One metric, declared once.

    Args:
        name: the logged name (``{split}/explain/{method}/{name}``); letters, digits, underscores.
        fn: per-sample scores ``fn(*compared[, k], **options) -> [N]`` (``compared`` as in
            :data:`COMPARES`); keyword-only parameters of ``fn`` are the metric's options.
        higher_is_better: ``False`` for divergences and sensitivities.
        uses_k: ``fn`` takes a top-k size ``k`` after the compared tensors.
        has_chance: logged with a ``chance_{name}`` twin (teacher vs. a freshly initialised student).
        compares: a key of :data:`COMPARES`.
    """

    name: str
    fn: Callable[..., Tensor]
    higher_is_better: bool = True
    uses_k: bool = False
    has_chance: bool = False
    compares: str = "maps"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"metric name must be letters, digits and underscores, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"metric {self.name!r}: fn must be callable, got {type(self.fn).__name__}")
        if self.compares not in COMPARES:
            raise ValueError(f"metric {self.name!r}: unknown compares={self.compares!r}; valid: {', '.join(COMPARES)}")

    @property
    def option_names(self) -> tuple[str, ...]:
        """The keyword-only parameters of ``fn``: the settings given as ``options``."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def score(self, *compared: Any, top_k: int | None = None, **options: Any) -> Tensor:
        """Per-sample scores ``[N]`` of ``compared`` (``top_k`` only for top-k metrics; a metric option may be called ``k``)."""
        return self.fn(*compared, **options) if top_k is None else self.fn(*compared, top_k, **options)


#: metric name -> spec, in registration order
METRICS: dict[str, MetricSpec] = {}
_discovered = False


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to :data:`METRICS` and return it; a name is registered once."""
    if not isinstance(spec, MetricSpec):
        raise TypeError(f"register_metric takes a MetricSpec, got {type(spec).__name__}")
    existing = METRICS.get(spec.name)
    if existing is not None and existing != spec:
        owner = existing.fn.__module__
        raise ValueError(f"metric {spec.name!r} is already registered (by {owner}); choose another name")
    METRICS[spec.name] = spec
    return spec


def _discover() -> None:
    """Import every module of this package once: each registers its metrics where it defines them."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    try:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
    except BaseException:
        _discovered = False
        raise


def metric_names(compares: str | None = None, *, has_chance: bool | None = None) -> list[str]:
    """Registered metric names, in registration order; only those comparing ``compares`` and
    (if given) with or without a chance twin."""
    if compares is not None and compares not in COMPARES:
        raise ValueError(f"unknown compares={compares!r}; valid: {', '.join(COMPARES)}")
    _discover()
    return [
        name
        for name, spec in METRICS.items()
        if (compares is None or spec.compares == compares) and (has_chance is None or spec.has_chance == has_chance)
    ]


def _unknown(name: object, why: str = "") -> ValueError:
    return ValueError(
        f"unknown metric {name!r}{why}; valid names: {', '.join(metric_names())} "
        "(or an import path such as my_pkg.metrics.MY_METRIC)"
    )


def metric_spec(metric: str | MetricSpec) -> MetricSpec:
    """The spec of a registered name, or of an import path ``"pkg.module.Attr"``; ``ValueError``
    listing the valid names otherwise."""
    if isinstance(metric, MetricSpec):
        return metric
    if not isinstance(metric, str):
        raise _unknown(metric)
    _discover()
    if metric in METRICS:
        return METRICS[metric]
    module_name, _, attr = metric.rpartition(".")
    if not module_name:
        raise _unknown(metric)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise _unknown(metric, f" (cannot import {module_name}: {err})") from None
    if not hasattr(module, attr):
        raise _unknown(metric, f" (module {module_name} has no attribute {attr!r})")
    obj = getattr(module, attr)
    if isinstance(obj, MetricSpec):
        return obj
    if not (hasattr(obj, "name") and hasattr(obj, "fn")):
        raise ValueError(
            f"{metric} is a {type(obj).__name__}, not a metric: declare it as MetricSpec(name=..., fn=...) "
            "or a class with the attributes name and fn"
        )
    fields = ("higher_is_better", "uses_k", "has_chance", "compares")
    return MetricSpec(name=obj.name, fn=obj.fn, **{f: getattr(obj, f) for f in fields if hasattr(obj, f)})


def _resolve(metric: str | MetricSpec, k: int | None) -> tuple[MetricSpec, int | None]:
    spec = metric_spec(metric)
    if spec.uses_k:
        if k is None:
            raise ValueError(f"metric {spec.name!r} needs a top-k size k (an integer >= 1)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
    elif k is not None:
        takes_k = ", ".join(n for n in metric_names() if METRICS[n].uses_k)
        raise ValueError(f"metric {spec.name!r} does not take k (only {takes_k} do)")
    return spec, k


def _check_options(spec: MetricSpec, options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.option_names))
    if unknown:
        valid = ", ".join(spec.option_names) or "none"
        raise ValueError(f"unknown option(s) {unknown} for metric {spec.name!r}; valid options: {valid}")
    return options


class AgreementMean(Metric):
    """Mean over samples of one metric's per-sample scores.

    Args:
        metric: a registered name, an import path, or a :class:`MetricSpec`.
        k: top-k size, required for (and only for) the top-k metrics.
        options: the metric's settings (keyword-only parameters of its function),
            e.g. ``{"noise_scale": 0.05, "seed": 0}``.

    ``update`` takes what the metric compares (:data:`COMPARES`). States: ``sum`` (float32),
    ``count`` and ``skipped`` (int64), all summed across ranks. :meth:`compute` returns
    ``sum / count`` (NaN when no finite sample was seen).
    """

    is_differentiable = False
    full_state_update = False

    sum: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(
        self, metric: str | MetricSpec, k: int | None = None, options: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spec, self.k = _resolve(metric, k)
        self.options = _check_options(self.spec, options)
        self.add_state("sum", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.spec.higher_is_better

    def update(self, *compared: Any) -> None:
        values = self.spec.score(*compared, top_k=self.k, **self.options).to(self.sum.device)
        finite = torch.isfinite(values)
        self.sum += torch.where(finite, values, torch.zeros_like(values)).sum()
        self.count += finite.sum()
        self.skipped += (~finite).sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), device=self.sum.device)
        return self.sum / self.count

    def extra_repr(self) -> str:
        return f"metric={self.spec.name!r}" + (f", k={self.k}" if self.k is not None else "")


class PerClassAgreement(Metric):
    """Per-sample scores of a two-tensor metric accumulated by class index, for a per-class table.

    ``update(a, b, target)`` with ``a``, ``b`` what the metric compares (e.g. student and teacher
    maps) and ``target`` a ``[N]`` tensor of class indices in ``[0, num_classes)`` (e.g. the label,
    or the teacher's predicted class).

    States ``sum`` ``[C]`` (float32), ``count`` and ``skipped`` ``[C]`` (int64), summed across
    ranks. :meth:`compute` returns a dict with ``mean`` ``[C]`` (NaN for classes without finite
    samples), ``count``, ``skipped`` and ``overall`` (mean over all finite samples);
    :meth:`table` turns it into one row per class.
    """

    is_differentiable = False
    full_state_update = False

    sum: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(self, metric: str | MetricSpec, num_classes: int, k: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.spec, self.k = _resolve(metric, k)
        if self.spec.compares == "explainer":
            raise ValueError(f"metric {self.spec.name!r} compares an explainer, not two tensors: no per-class table")
        self.num_classes = num_classes
        self.add_state("sum", default=torch.zeros(num_classes, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        return self.spec.higher_is_better

    def update(self, a: Tensor, b: Tensor, target: Tensor) -> None:
        values = self.spec.score(a, b, top_k=self.k).to(self.sum.device)
        target = torch.as_tensor(target, device=self.sum.device)
        if target.shape != values.shape:
            raise ValueError(
                f"target must have shape [N] = {tuple(values.shape)} (one class index per sample), "
                f"got {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        target = target.long()
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(
                f"target class indices must be in [0, {self.num_classes}), "
                f"got min {int(target.min())}, max {int(target.max())}"
            )
        finite = torch.isfinite(values)
        self.sum.index_add_(0, target, torch.where(finite, values, torch.zeros_like(values)))
        self.count.index_add_(0, target, finite.long())
        self.skipped.index_add_(0, target, (~finite).long())

    def compute(self) -> dict[str, Tensor]:
        count_f = self.count.to(self.sum.dtype)
        mean = torch.where(self.count > 0, self.sum / count_f.clamp_min(1), torch.full_like(self.sum, float("nan")))
        total = self.count.sum()
        overall = self.sum.sum() / total if total > 0 else torch.tensor(float("nan"), device=self.sum.device)
        return {"mean": mean, "count": self.count.clone(), "skipped": self.skipped.clone(), "overall": overall}

    def table(self, class_names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One row per class: ``{"class", "name", "mean", "count", "skipped"}`` (synced values)."""
        result = self.compute()
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"expected {self.num_classes} class names, got {len(names)}")
        return [
            {
                "class": c,
                "name": names[c],
                "mean": float(result["mean"][c]),
                "count": int(result["count"][c]),
                "skipped": int(result["skipped"][c]),
            }
            for c in range(self.num_classes)
        ]


class AgreementCollection(MetricCollection):
    """A :class:`~torchmetrics.MetricCollection` of :class:`AgreementMean`, keyed by metric name.

    Args:
        k: top-k size, given to the metrics that use one.
        names: metrics to include (registered names or import paths; default: every registered
            metric comparing two models' maps). All must compare the same kind of inputs.
        prefix / postfix: as in ``MetricCollection`` (e.g. ``prefix="val/agree/"``).

    Compute groups are disabled on purpose: metrics of the same class whose states happen to be
    equal after the first batch must not be merged into one state.
    """

    def __init__(
        self,
        k: int,
        names: Iterable[str | MetricSpec] | None = None,
        prefix: str | None = None,
        postfix: str | None = None,
    ) -> None:
        specs = [metric_spec(n) for n in (metric_names("maps") if names is None else names)]
        kinds = sorted({s.compares for s in specs})
        if len(kinds) > 1:
            raise ValueError(f"a collection's metrics must compare the same inputs, got {', '.join(kinds)}")
        seen = [s.name for s in specs]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise ValueError(f"metric name(s) {twice} given twice; each logged name must be unique")
        metrics = {s.name: AgreementMean(s, k if s.uses_k else None) for s in specs}
        super().__init__(metrics, prefix=prefix, postfix=postfix, compute_groups=False)


# ---------------------------------------------------------------------------------------------
# the built-in metrics (Krishna et al. 2022; Stanton et al. 2021): see kdlight.functional.agreement
for _spec in (
    MetricSpec("cosine", F.cosine_agreement, has_chance=True),
    MetricSpec("rank_correlation", F.rank_correlation, has_chance=True),
    MetricSpec("pearson", F.pearson_agreement),
    MetricSpec("feature_agreement", F.feature_agreement, uses_k=True, has_chance=True),
    MetricSpec("rank_agreement", F.rank_agreement, uses_k=True),
    MetricSpec("sign_agreement", F.sign_agreement, uses_k=True),
    MetricSpec("signed_rank_agreement", F.signed_rank_agreement, uses_k=True),
    MetricSpec("pairwise_rank_agreement", F.pairwise_rank_agreement),
    MetricSpec("top1_agreement", F.top1_agreement, compares="logits"),
    MetricSpec("predictive_kl", F.predictive_kl, higher_is_better=False, compares="logits"),
):
    register_metric(_spec)
del _spec
