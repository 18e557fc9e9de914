"""Explanation stability: how far does a model's map move when its input moves a little?

Two per-sample scores of one model's explanation function ``E`` at inputs ``x``:

* ``sensitivity_max``: Captum's :func:`captum.metrics.sensitivity_max` (Yeh et al. 2019, "On the
  (In)fidelity and Sensitivity of Explanations"): ``max_j ||E(x + d_j) - E(x)|| / ||E(x)||``
  (Frobenius norms; Captum divides by 1 where ``E(x)`` is all zero) over ``n_samples`` draws
  ``d_j``. Lower is better; 0 for an explanation that does not move.
* ``self_agreement``: the agreement of ``E(x + d_j)`` with ``E(x)``, averaged over ``n_samples``
  draws, measured by a registered metric comparing maps (``agreement``, default
  ``rank_correlation``; a top-k one takes ``k``). 1 is perfectly stable.

Noise: ``d`` is uniform in ``[-noise_scale, noise_scale]`` per feature (the L-infinity ball of
Captum's ``default_perturb_func``), drawn on the CPU from a ``torch.Generator`` seeded with
``seed`` and moved to the inputs' device: the global RNG is never touched, and the draws depend
only on ``seed``, the inputs' shape and ``n_samples`` (and ``max_examples_per_batch`` for the
sensitivity). A teacher and a student measured with the same settings on the same inputs
therefore see identical noise.

``explain(inputs, target) -> maps`` of the inputs' shape, e.g.
``lambda x, t: attribute(model, x, t, config)`` or ``Saliency(model).attribute`` wrapped as
``lambda x, t: saliency.attribute(x, target=t)``. It is called under ``torch.no_grad`` (gradient
methods enable gradients themselves, as Captum's and kdlight's do) and never under inference
mode, so it also works inside ``trainer.validate()``. Random methods (GradientShap, noise tunnels)
add their own randomness to the scores. Inputs must be floating point: noise cannot be added to
token ids.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.metrics import sensitivity_max as captum_sensitivity_max
from torch import Tensor

from kdlight.explain.metrics import MetricSpec, metric_spec, register_metric

__all__ = ["Explain", "sensitivity", "self_agreement", "SENSITIVITY_MAX", "SELF_AGREEMENT"]

#: ``explain(inputs [N, ...], target [N]) -> maps [N, ...]``
Explain = Callable[[Tensor, Tensor], Tensor]


def _prepare(inputs: Tensor, target: Tensor | int, noise_scale: float, n_samples: int) -> tuple[Tensor, Tensor]:
    if not isinstance(inputs, Tensor) or inputs.ndim < 1:
        raise ValueError("inputs must be a tensor with a leading sample dimension [N, ...]")
    if not inputs.is_floating_point():
        raise ValueError(
            f"stability adds noise to the inputs, which needs floating-point inputs, got {inputs.dtype} "
            "(token ids are perturbed by replacing tokens, not by noise)"
        )
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)) or not noise_scale > 0:
        raise ValueError(f"noise_scale must be a number > 0, got {noise_scale!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    with torch.inference_mode(False):  # normal tensors also when the caller runs under inference mode
        x = inputs.detach().clone()
        tgt = torch.as_tensor(target, device=x.device).long().clone()
        if tgt.ndim == 0:
            tgt = tgt.expand(x.shape[0]).clone()
    if tgt.shape != (x.shape[0],):
        raise ValueError(f"target must be an int or a tensor [N] = [{x.shape[0]}], got shape {tuple(tgt.shape)}")
    return x, tgt


def _uniform_noise(generator: torch.Generator, like: Tensor, scale: float) -> Tensor:
    draw = torch.rand(like.shape, generator=generator, dtype=torch.float32)
    return ((2 * draw - 1) * scale).to(device=like.device, dtype=like.dtype)


def sensitivity(
    explain: Explain,
    inputs: Tensor,
    target: Tensor | int,
    *,
    noise_scale: float = 0.02,
    n_samples: int = 10,
    seed: int = 0,
    max_examples_per_batch: int | None = None,
) -> Tensor:
    """Captum's max-sensitivity of ``explain`` at ``inputs`` ``[N]`` (float32), with seeded noise."""
    x, tgt = _prepare(inputs, target, noise_scale, n_samples)
    generator = torch.Generator().manual_seed(seed)

    def perturb(batch: Tensor) -> Tensor:  # Captum passes the inputs repeated n_samples times
        return batch + _uniform_noise(generator, batch, noise_scale)

    def explanation(batch: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor | tuple[Tensor, ...]:
        # Captum passes the unperturbed inputs as a tuple and expects a tuple back
        return (explain(batch[0], target),) if isinstance(batch, tuple) else explain(batch, target)

    with torch.inference_mode(False):
        scores = captum_sensitivity_max(
            explanation,
            x,
            perturb_func=perturb,
            n_perturb_samples=n_samples,
            max_examples_per_batch=max_examples_per_batch,
            target=tgt,
        )
    return scores.detach().to(torch.float32)


def self_agreement(
    explain: Explain,
    inputs: Tensor,
    target: Tensor | int,
    *,
    noise_scale: float = 0.02,
    n_samples: int = 1,
    seed: int = 0,
    agreement: str = "rank_correlation",
    k: int | None = None,
) -> Tensor:
    """Mean agreement ``[N]`` of ``explain`` at noisy inputs with ``explain`` at ``inputs``."""
    spec = metric_spec(agreement)
    if spec.compares != "maps":
        raise ValueError(f"agreement must be a metric comparing two maps, got {agreement!r} (compares {spec.compares})")
    if spec.uses_k != (k is not None):
        raise ValueError(f"agreement {agreement!r} {'needs a top-k size k' if spec.uses_k else 'does not take k'}")
    x, tgt = _prepare(inputs, target, noise_scale, n_samples)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.no_grad():
        clean = explain(x, tgt)
        draws = [
            spec.score(explain(x + _uniform_noise(generator, x, noise_scale), tgt), clean, top_k=k)
            for _ in range(n_samples)
        ]
    return torch.stack(draws, dim=1).to(torch.float32).mean(dim=1)


SENSITIVITY_MAX = register_metric(
    MetricSpec("sensitivity_max", sensitivity, higher_is_better=False, compares="explainer")
)
SELF_AGREEMENT = register_metric(MetricSpec("self_agreement", self_agreement, compares="explainer"))
