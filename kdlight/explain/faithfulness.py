"""Faithfulness of attribution maps: deletion / insertion AUC and infidelity.

Both functions answer "does the map point at what the model actually uses?" for one model and its
own maps; the validation callback runs them for the teacher and the student on the probe set.

Context: the attribution context (:mod:`kdlight.explain.attribution.context`) with gradients off:
safe under ``torch.no_grad`` and ``torch.inference_mode`` (inputs and maps are cloned to normal
tensors), with an active ``torch.autocast`` disabled. The model is put in eval mode and every
submodule's train/eval flag is restored afterwards; no backward pass is run, so parameter
``.grad`` is untouched. Floating inputs are float32 unless the model's floating parameters all
share another dtype (e.g. ``bf16-true``); integer inputs keep their dtype (infidelity, which adds
noise, refuses them). The results are detached float32 tensors of shape ``[N]`` on the inputs'
device.

Decisions
---------
* Deletion / insertion (Petsiuk et al. 2018) score the *softmax probability* of the target class.
  Features are ordered by *signed* attribution, descending (most positive evidence first). For
  images and signals the map is summed over channels and whole pixels / time steps move together;
  tabular rows are ordered per column (the modality's positions,
  :meth:`kdlight.core.modality.Modality.position_scores`). The ``P`` positions are moved in ``steps``
  equal chunks (cut points ``round(i * P / steps)``), giving ``steps + 1`` points on the fraction
  axis ``cut / P`` in ``[0, 1]``; the area is the trapezoid rule over it. Ties keep input order.
  NaN attributions sort last.
* Token ids (the text modality): a removed token is replaced by the modality's reference token
  (:meth:`kdlight.core.modality.Text.replace`); only each sequence's own ``M`` real tokens move
  (padding never does), in ``steps`` chunks of its own (cut points ``round(i * M / steps)``), so the
  fraction axis ``cut / M`` is per sequence (``[N, steps + 1]``).
* Infidelity (Yeh et al. 2019) wraps :func:`captum.metrics.infidelity` on the model's *logits*
  (the quantity the attribution methods explain). The perturbation is Gaussian,
  ``eps ~ N(0, noise_std^2)``. With ``multiply_by_inputs=True`` (default; for "global" maps such as
  input x gradient, integrated gradients, DeepLift, SHAP) the perturbed input is
  ``x - eps * (x - baseline)`` and the perturbation passed to Captum is ``eps``, so
  ``eps . map == f(x) - f(x_perturbed)`` exactly for a linear model and its input x gradient map.
  With ``multiply_by_inputs=False`` (local maps: saliency, Grad-CAM) the perturbed input is
  ``x - eps`` and the perturbation is ``eps``. The noise comes from a local ``torch.Generator``
  seeded with ``seed``: the global RNG is never read or written, so scoring may run on another
  thread while training draws random numbers.
  The draws depend on ``seed``, ``N``, ``n_perturb_samples`` and ``batch_size`` (Captum hands the
  perturbation function chunks of repeated inputs), so teacher and student scored with the same
  settings on the same probe set see identical noise. Integer inputs (token ids) take no Gaussian
  noise, so their infidelity is NaN per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.core.modality import Modality
from kdlight.explain.attribution.context import Placement, TargetLike, as_target, attribution_context

__all__ = ["deletion_insertion_auc", "infidelity_score", "deletion_insertion_curves"]


def _check_pair(inputs: Tensor, attributions: Tensor) -> None:
    if not isinstance(inputs, Tensor) or not isinstance(attributions, Tensor):
        raise TypeError("inputs and attributions must be tensors")
    if inputs.shape != attributions.shape:
        raise ValueError(
            f"attributions must have the inputs' shape, got {tuple(attributions.shape)} "
            f"for inputs {tuple(inputs.shape)}"
        )
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch [N, ...], got {tuple(inputs.shape)}")


# ------------------------------------------------------------------------------------------
# deletion / insertion
# ------------------------------------------------------------------------------------------
def _position_scores(attributions: Tensor, modality: Modality) -> Tensor:
    """Per-position scores [N, P] (the modality's positions); NaN sorts last."""
    return torch.nan_to_num(modality.position_scores(attributions).float(), nan=float("-inf"))


def _ranks(scores: Tensor) -> Tensor:
    """Rank of each position (0 = highest score) [N, P]."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _token_ranks(scores: Tensor, valid: Tensor) -> Tensor:
    """Ranks [N, T] of the real tokens first (by score), padding after them."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort((~valid).gather(1, order).byte(), dim=1, stable=True).indices)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _curve(
    model: nn.Module,
    x: Tensor,
    base: Tensor,
    ranks: Tensor,
    cuts: Tensor,
    target: Tensor,
    reveal: bool,
    batch_size: int,
    modality: Modality,
) -> Tensor:
    """Target-class probabilities [N, S]: row i, point j has the ``cuts[i, j]`` top positions moved."""
    n, s = cuts.shape
    out = torch.empty(n * s, device=x.device, dtype=torch.float32)
    for start in range(0, n * s, batch_size):
        flat = torch.arange(start, min(start + batch_size, n * s), device=x.device)
        row, point = flat // s, flat % s
        moved = modality.position_mask(ranks[row] < cuts[row, point, None], tuple(x.shape[1:]))
        batch = torch.where(moved, x[row], base[row]) if reveal else torch.where(moved, base[row], x[row])
        probs = F.softmax(model(batch).float(), dim=1)
        out[start : start + flat.numel()] = probs.gather(1, target[row, None]).squeeze(1)
    return out.view(n, s)


def deletion_insertion_curves(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike,
    steps: int = 20,
    baseline: float | Tensor = 0.0,
    batch_size: int = 256,
    *,
    modality: Modality | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Deletion and insertion curves ``[N, steps + 1]`` and their fraction axis ``[steps + 1]``
    (token ids: ``[N, steps + 1]``, each sequence's own real tokens).

    See :func:`deletion_insertion_auc`; the curves are the target-class softmax probabilities.
    """
    _check_pair(inputs, attributions)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    modality = modality if modality is not None else Modality.for_inputs(inputs)
    modality.check(inputs.shape)
    tokens = modality.name == "text"
    if tokens and not (isinstance(baseline, (int, float)) and baseline == 0):
        raise ValueError(
            "token ids are removed by the text modality's reference token (Text.reference_id); leave baseline unset"
        )
    place = Placement.of(model, inputs.device)
    with attribution_context(model, (inputs.device, place.device), grad=False):
        x = place.put(inputs)
        scores = _position_scores(place.put(attributions, torch.float32), modality)
        n = x.shape[0]
        if tokens:
            valid = modality.valid(x)
            base = modality.replace(x, valid)
            ranks = _token_ranks(scores, valid)
            points = torch.arange(steps + 1, device=place.device, dtype=torch.float32)
            real = valid.sum(1, keepdim=True).float()
            cuts = torch.round(points * real / steps).long()
            fractions = cuts.float() / real.clamp(min=1)
        else:
            base = torch.broadcast_to(torch.as_tensor(baseline).to(device=place.device, dtype=x.dtype), x.shape)
            ranks = _ranks(scores)
            n_pos = ranks.shape[1]
            cuts = torch.round(torch.linspace(0, n_pos, steps + 1, device=place.device)).long()
            fractions = cuts.float() / n_pos
            cuts = cuts.expand(n, -1)
        tgt = as_target(target, n, place.device)
        deletion = _curve(model, x, base, ranks, cuts, tgt, reveal=False, batch_size=batch_size, modality=modality)
        insertion = _curve(model, x, base, ranks, cuts, tgt, reveal=True, batch_size=batch_size, modality=modality)
    out = inputs.device
    return deletion.to(out), insertion.to(out), fractions.to(out)


def deletion_insertion_auc(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike,
    steps: int = 20,
    baseline: float | Tensor = 0.0,
    batch_size: int = 256,
    *,
    modality: Modality | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample areas ``[N]`` under the deletion and insertion curves (Petsiuk et al. 2018).

    Positions are removed (replaced by ``baseline``) / inserted (revealed on a ``baseline`` input)
    in order of decreasing attribution, in ``steps`` equal chunks; the target-class softmax
    probability is integrated over the removed/revealed fraction with the trapezoid rule.
    Lower deletion AUC and higher insertion AUC mean a more faithful map. ``baseline`` is a scalar
    or a tensor broadcastable to ``inputs`` (e.g. a training mean of shape ``[1, ...]``).
    ``batch_size`` bounds the rows per forward pass. ``modality`` says what a position is (default:
    guessed from the inputs' rank). Token ids (text modality): each sequence's real tokens are
    replaced by the reference token in ``steps`` chunks of its own length; padding never moves and
    ``baseline`` stays unset. A sequence without real tokens gets the constant probability's area.
    """
    deletion, insertion, fractions = deletion_insertion_curves(
        model, inputs, attributions, target, steps, baseline, batch_size, modality=modality
    )
    if fractions.dim() == 2:  # token ids: each sequence's own axis (all zeros without real tokens)
        fractions = torch.where(
            fractions[:, -1:] > 0, fractions, torch.linspace(0, 1, fractions.shape[1]).to(fractions)
        )
    return torch.trapezoid(deletion, fractions, dim=1), torch.trapezoid(insertion, fractions, dim=1)


# ------------------------------------------------------------------------------------------
# infidelity
# ------------------------------------------------------------------------------------------
def _gaussian_perturbation(noise_std: float, generator: torch.Generator, baseline: Tensor | None):
    """Captum perturb_func: Gaussian ``eps``; relative to ``x - baseline`` if ``baseline`` given."""

    def perturb(x: Tensor) -> tuple[Tensor, Tensor]:
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * noise_std
        step = eps if baseline is None else eps * (x - baseline)
        return eps, x - step

    return perturb


def _shared_baseline(baseline: float | Tensor, x: Tensor) -> Tensor:
    """A baseline shared by all rows (scalar, ``[...]`` or ``[1, ...]``), as a ``[1, ...]`` tensor."""
    base = torch.as_tensor(baseline).to(device=x.device, dtype=x.dtype)
    try:
        return torch.broadcast_to(base, (1, *x.shape[1:])).clone()
    except RuntimeError:
        raise ValueError(
            f"infidelity baseline must broadcast to one input {tuple(x.shape[1:])}, got {tuple(base.shape)}"
        ) from None


def infidelity_score(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetLike,
    n_perturb_samples: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
    *,
    multiply_by_inputs: bool = True,
    baseline: float | Tensor = 0.0,
    normalize: bool = False,
    batch_size: int | None = None,
) -> Tensor:
    """Per-sample explanation infidelity ``[N]`` (Yeh et al. 2019) via ``captum.metrics.infidelity``.

    ``E_eps[(eps . map - (f_t(x) - f_t(x_eps)))^2]`` on the target logit with Gaussian ``eps`` of
    std ``noise_std``; lower is better. ``multiply_by_inputs=True`` scales the noise by
    ``x - baseline`` (for maps that include the input factor, e.g. input x gradient);
    ``False`` adds it directly (saliency-like maps); ``baseline`` is shared by all rows (a scalar
    or a tensor of one input's shape, with or without a leading 1). ``normalize`` makes the score invariant to
    rescaling the map (Captum's beta). ``batch_size`` caps the perturbed rows per forward pass.
    Integer inputs (token ids) cannot take Gaussian noise: their score is NaN per sample.
    """
    from captum.metrics import infidelity

    _check_pair(inputs, attributions)
    if n_perturb_samples < 1 or noise_std <= 0:
        raise ValueError("n_perturb_samples must be >= 1 and noise_std > 0")
    if not inputs.is_floating_point():  # token ids: Gaussian noise on ids has no meaning
        return torch.full((inputs.shape[0],), float("nan"), device=inputs.device)
    place = Placement.of(model, inputs.device)
    n = inputs.shape[0]
    max_rows = None if batch_size is None else max(n, min(batch_size, n * n_perturb_samples))
    with attribution_context(model, (inputs.device, place.device), grad=False):
        x = place.put(inputs)
        attr = place.put(attributions)
        base = _shared_baseline(baseline, x) if multiply_by_inputs else None
        generator = torch.Generator(device=place.device).manual_seed(seed)
        score = infidelity(
            lambda batch: model(batch).float(),
            _gaussian_perturbation(noise_std, generator, base),
            x,
            attr,
            target=as_target(target, n, place.device),
            n_perturb_samples=n_perturb_samples,
            max_examples_per_batch=max_rows,
            normalize=normalize,
        )
    return score.detach().float().to(inputs.device)
