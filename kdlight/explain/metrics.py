"""torchmetrics wrappers that average the per-sample agreement functions over a dataset.

Every metric keeps a ``sum`` and a ``count`` of the finite per-sample values, both reduced with
``dist_reduce_fx="sum"``, so under DDP :meth:`compute` returns exactly the mean over all samples
of all ranks (not a mean of per-rank means, which is wrong for uneven shards). Per-sample values
that are not finite (e.g. from NaN / inf attributions) are not added; they are counted in the
``skipped`` state instead.

``update(student, teacher)`` takes the student's and the teacher's attribution maps (or logits,
for ``top1_agreement`` / ``predictive_kl``), in that order; they are passed to the functions as
``a`` and ``b``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from kdlight.functional import agreement as F

__all__ = [
    "AGREEMENT_FUNCTIONS",
    "TOPK_FUNCTIONS",
    "ATTRIBUTION_METRICS",
    "FIDELITY_METRICS",
    "agreement_names",
    "get_agreement_function",
    "AgreementMean",
    "PerClassAgreement",
    "AgreementCollection",
    "agreement_metrics",
]

#: metric name -> per-sample function ``fn(a, b[, k]) -> [N]``
AGREEMENT_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "cosine": F.cosine_agreement,
    "rank_correlation": F.rank_correlation,
    "pearson": F.pearson_agreement,
    "feature_agreement": F.feature_agreement,
    "rank_agreement": F.rank_agreement,
    "sign_agreement": F.sign_agreement,
    "signed_rank_agreement": F.signed_rank_agreement,
    "pairwise_rank_agreement": F.pairwise_rank_agreement,
    "top1_agreement": F.top1_agreement,
    "predictive_kl": F.predictive_kl,
}

#: the functions that take a top-k size ``k``
TOPK_FUNCTIONS: frozenset[str] = frozenset(
    {"feature_agreement", "rank_agreement", "sign_agreement", "signed_rank_agreement"}
)

#: the attribution-map metrics, in the order :func:`agreement_metrics` builds them
ATTRIBUTION_METRICS: tuple[str, ...] = (
    "cosine",
    "rank_correlation",
    "pearson",
    "feature_agreement",
    "rank_agreement",
    "sign_agreement",
    "signed_rank_agreement",
    "pairwise_rank_agreement",
)

#: prediction-fidelity metrics on logits
FIDELITY_METRICS: tuple[str, ...] = ("top1_agreement", "predictive_kl")

_LOWER_IS_BETTER = frozenset({"predictive_kl"})


def agreement_names() -> list[str]:
    """All valid metric names (keys of :data:`AGREEMENT_FUNCTIONS`)."""
    return list(AGREEMENT_FUNCTIONS)


def get_agreement_function(name: str) -> Callable[..., Tensor]:
    """The per-sample function called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return AGREEMENT_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown agreement metric {name!r}; valid names: {', '.join(agreement_names())}"
        ) from None


def _resolve(fn_name: str, k: int | None) -> tuple[Callable[..., Tensor], int | None]:
    fn = get_agreement_function(fn_name)
    if fn_name in TOPK_FUNCTIONS:
        if k is None:
            raise ValueError(f"metric {fn_name!r} needs a top-k size k (an integer >= 1)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
    elif k is not None:
        raise ValueError(
            f"metric {fn_name!r} does not take k (only {', '.join(sorted(TOPK_FUNCTIONS))} do)"
        )
    return fn, k


def _per_sample(fn: Callable[..., Tensor], k: int | None, student: Tensor, teacher: Tensor) -> Tensor:
    return fn(student, teacher) if k is None else fn(student, teacher, k)


class AgreementMean(Metric):
    """Mean over samples of one per-sample agreement function.

    Args:
        fn_name: a key of :data:`AGREEMENT_FUNCTIONS`.
        k: top-k size, required for (and only for) the top-k metrics.

    States: ``sum`` (float32), ``count`` and ``skipped`` (int64), all summed across ranks.
    :meth:`compute` returns ``sum / count`` (NaN when no finite sample was seen).
    """

    is_differentiable = False
    full_state_update = False

    sum: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(self, fn_name: str, k: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn_name = fn_name
        self.fn, self.k = _resolve(fn_name, k)
        self.add_state("sum", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        """``False`` for ``predictive_kl`` (a divergence), ``True`` for the agreement scores."""
        return self.fn_name not in _LOWER_IS_BETTER

    def update(self, student: Tensor, teacher: Tensor) -> None:
        values = _per_sample(self.fn, self.k, student, teacher).to(self.sum.device)
        finite = torch.isfinite(values)
        self.sum += torch.where(finite, values, torch.zeros_like(values)).sum()
        self.count += finite.sum()
        self.skipped += (~finite).sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), device=self.sum.device)
        return self.sum / self.count

    def extra_repr(self) -> str:
        return f"fn_name={self.fn_name!r}" + (f", k={self.k}" if self.k is not None else "")


class PerClassAgreement(Metric):
    """Per-sample agreement accumulated by class index, for a per-class table.

    ``update(student, teacher, target)`` with ``target`` a ``[N]`` tensor of class indices in
    ``[0, num_classes)`` (e.g. the label, or the teacher's predicted class).

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

    def __init__(self, fn_name: str, num_classes: int, k: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.fn_name = fn_name
        self.num_classes = num_classes
        self.fn, self.k = _resolve(fn_name, k)
        self.add_state("sum", default=torch.zeros(num_classes, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def higher_is_better(self) -> bool:  # type: ignore[override]
        """``False`` for ``predictive_kl`` (a divergence), ``True`` for the agreement scores."""
        return self.fn_name not in _LOWER_IS_BETTER

    def update(self, student: Tensor, teacher: Tensor, target: Tensor) -> None:
        values = _per_sample(self.fn, self.k, student, teacher).to(self.sum.device)
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
        k: top-k size for the top-k metrics.
        names: metric names to include (default: :data:`ATTRIBUTION_METRICS`).
        prefix / postfix: as in ``MetricCollection`` (e.g. ``prefix="val/agree/"``).

    Compute groups are disabled on purpose: metrics of the same class whose states happen to be
    equal after the first batch must not be merged into one state.
    """

    def __init__(
        self,
        k: int,
        names: Iterable[str] | None = None,
        prefix: str | None = None,
        postfix: str | None = None,
    ) -> None:
        names = list(ATTRIBUTION_METRICS if names is None else names)
        metrics = {n: AgreementMean(n, k if n in TOPK_FUNCTIONS else None) for n in names}
        super().__init__(metrics, prefix=prefix, postfix=postfix, compute_groups=False)


def agreement_metrics(
    k: int,
    names: Iterable[str] | None = None,
    prefix: str | None = None,
    postfix: str | None = None,
) -> AgreementCollection:
    """The attribution-agreement metrics (or ``names``) as one collection keyed by name."""
    return AgreementCollection(k, names=names, prefix=prefix, postfix=postfix)
