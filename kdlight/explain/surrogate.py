"""A shallow decision tree as a global surrogate of a model's predictions.

How well a depth-limited tree reproduces the teacher's (or student's) predicted classes from the
inputs (or from any per-sample features) says how simple the decision function is; comparing the
teacher's and student's surrogates says whether the student learned a similar rule.

Decisions
---------
* Features are flattened per sample (``[N, ...] -> [N, F]``; a 1-D ``[N]`` is one feature).
* Predictions are class labels ``[N]``; a 2-D ``[N, K]`` array (logits / probabilities) is
  reduced with argmax.
* ``fidelity`` is the agreement of a tree fitted on a random half of the samples (seeded) with
  the predictions on the other half. With fewer than :data:`MIN_HELD_OUT_SAMPLES` samples there is
  no split: ``fidelity`` is measured on the training samples and ``held_out`` is ``False``.
* The reported ``tree`` (and ``n_leaves``, ``depth``, ``train_fidelity``) is refitted on all
  samples; ``train_fidelity`` is its agreement with the predictions on all samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.tree import DecisionTreeClassifier
from torch import Tensor

__all__ = ["MIN_HELD_OUT_SAMPLES", "SurrogateReport", "fit_surrogate"]

#: below this many samples the fidelity is measured on the training samples
MIN_HELD_OUT_SAMPLES = 10


@dataclass
class SurrogateReport:
    """Result of :func:`fit_surrogate`."""

    fidelity: float
    train_fidelity: float
    n_leaves: int
    depth: int
    tree: DecisionTreeClassifier
    held_out: bool


def _to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _prepare(features: Tensor | np.ndarray, predictions: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``[N, F]`` float features and ``[N]`` labels."""
    x, y = _to_numpy(features), _to_numpy(predictions)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError("features and predictions must have a sample dimension")
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(f"predictions must be labels [N] or scores [N, K], got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"features have {len(x)} samples but predictions have {len(y)}")
    if len(x) == 0:
        raise ValueError("fit_surrogate needs at least one sample")
    x = x.reshape(len(x), -1).astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x, y


def _tree(max_depth: int, seed: int) -> DecisionTreeClassifier:
    return DecisionTreeClassifier(max_depth=max_depth, random_state=seed)


def _held_out_fidelity(x: np.ndarray, y: np.ndarray, max_depth: int, seed: int) -> float:
    """Fit on a seeded random half, score agreement on the other half."""
    order = np.random.default_rng(seed).permutation(len(x))
    fit, test = order[: len(x) // 2], order[len(x) // 2 :]
    tree = _tree(max_depth, seed).fit(x[fit], y[fit])
    return float((tree.predict(x[test]) == y[test]).mean())


def fit_surrogate(
    features: Tensor | np.ndarray,
    predictions: Tensor | np.ndarray,
    max_depth: int = 4,
    seed: int = 0,
) -> SurrogateReport:
    """Fit a depth-limited decision tree to ``predictions``; report its held-out fidelity."""
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    x, y = _prepare(features, predictions)
    tree = _tree(max_depth, seed).fit(x, y)
    train_fidelity = float((tree.predict(x) == y).mean())
    held_out = len(x) >= MIN_HELD_OUT_SAMPLES
    fidelity = _held_out_fidelity(x, y, max_depth, seed) if held_out else train_fidelity
    return SurrogateReport(
        fidelity=fidelity,
        train_fidelity=train_fidelity,
        n_leaves=int(tree.get_n_leaves()),
        depth=int(tree.get_depth()),
        tree=tree,
        held_out=held_out,
    )
