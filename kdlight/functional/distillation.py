"""Distillation objectives as pure tensor functions (no state, no Lightning).

Every function takes student and teacher tensors and returns a scalar loss. Half-precision
inputs (float16 / bfloat16) are upcast and the loss is computed and returned in float32;
float64 inputs stay float64. The functions do not detach the teacher themselves (the caller
runs the teacher under ``no_grad``), except RKD, whose teacher potentials are computed under
``no_grad`` as in the reference implementation.

Definitions follow /work/shared/REFERENCES.md ("Distillation objectives"):

* :func:`kd_loss` - Hinton et al. 2015.
* :func:`dkd_loss` - Zhao et al. CVPR 2022 (mdistiller's ``dkd_loss``, no warm-up factor).
* :func:`attention_transfer_loss` - Zagoruyko & Komodakis 2017 (the reference *code* form).
* :func:`rkd_loss`, :func:`rkd_distance_loss`, :func:`rkd_angle_loss` - Park et al. CVPR 2019.
* :func:`pkt_loss` - Passalis & Tefas ECCV 2018 (RepDistiller's ``cosine_similarity_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kd_loss",
    "dkd_loss",
    "attention_transfer_loss",
    "rkd_loss",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "pkt_loss",
]

_NON_TARGET_OFFSET = 1000.0  # mdistiller: subtracted from the target logit (after /T) for NCKD


# --------------------------------------------------------------------------- helpers


def _upcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast to a common floating dtype that is at least float32."""
    dtype = torch.float32
    for t in tensors:
        if t.dtype == torch.float64:
            dtype = torch.float64
    return tuple(t.to(dtype) for t in tensors)


def _check_temperature(temperature: float) -> None:
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_batch(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() < 1 or teacher.dim() < 1 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{what}: student and teacher batch sizes differ: student shape "
            f"{tuple(student.shape)}, teacher shape {tuple(teacher.shape)}"
        )


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, what: str) -> None:
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(
            f"{what}: logits must be 2-D [batch, classes], got student shape "
            f"{tuple(student_logits.shape)}, teacher shape {tuple(teacher_logits.shape)}"
        )
    _check_batch(student_logits, teacher_logits, what)
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"{what}: student and teacher class counts differ: student shape "
            f"{tuple(student_logits.shape)}, teacher shape {tuple(teacher_logits.shape)}"
        )


def _check_embeddings(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() < 2 or teacher.dim() < 2:
        raise ValueError(
            f"{what}: embeddings must be at least 2-D [batch, ...], got student shape "
            f"{tuple(student.shape)}, teacher shape {tuple(teacher.shape)}"
        )
    _check_batch(student, teacher, what)


# --------------------------------------------------------------------------- logit-based


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.

    KL is summed over classes and averaged over the batch. Logits are ``[B, C]``.
    """
    _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits, "kd_loss")
    s, t = _upcast(student_logits, teacher_logits)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _binary_log_probs(z: Tensor, gt_mask: Tensor) -> Tensor:
    """``log [p_target, 1 - p_target]`` of ``softmax(z)``, ``[B, 2]``, computed in log space.

    ``log p_target = z_target - lse(z)`` and ``log(1 - p_target) = lse(z_non-target) - lse(z)``,
    so neither is the log of a rounded (possibly zero) probability.
    """
    lse_all = torch.logsumexp(z, dim=1)
    log_p_target = (z * gt_mask).sum(dim=1) - lse_all
    lse_other = torch.logsumexp(z.masked_fill(gt_mask.bool(), float("-inf")), dim=1)
    log_p_other = lse_other - lse_all
    return torch.stack([log_p_target, log_p_other], dim=1)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD: ``alpha * TCKD + beta * NCKD``, each times ``T^2``, batch-averaged.

    TCKD = KL(b_t || b_s) with ``b = [p_target, 1 - p_target]`` of ``softmax(z/T)``;
    NCKD = KL(p̂_t || p̂_s) with p̂ the softmax of ``z/T - 1000 * onehot(target)`` (the
    target class masked out, as in mdistiller). No warm-up factor. The binary log
    probabilities are computed with logsumexp instead of ``log(prob)``, which guards the log
    against zero probabilities (instead of clamping them). ``target`` holds class indices,
    shape ``[B]``.
    """
    _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits, "dkd_loss")
    if target.shape != student_logits.shape[:1]:
        raise ValueError(
            f"dkd_loss: target must have shape [batch], got target shape {tuple(target.shape)}, "
            f"student shape {tuple(student_logits.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"dkd_loss: target must hold integer class indices, got {target.dtype}")
    num_classes = student_logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"dkd_loss: needs at least 2 classes, got student shape {tuple(student_logits.shape)}")
    if target.numel() and bool(((target < 0) | (target >= num_classes)).any()):
        raise ValueError(f"dkd_loss: target indices must lie in [0, {num_classes})")

    s, t = _upcast(student_logits, teacher_logits)
    s = s / temperature
    t = t / temperature
    gt_mask = torch.zeros_like(s).scatter_(1, target.long().unsqueeze(1), 1.0)

    # target-class KD on the binary distribution [p_target, 1 - p_target]
    log_b_s = _binary_log_probs(s, gt_mask)
    log_b_t = _binary_log_probs(t, gt_mask)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)

    # non-target-class KD: softmax with the target logit pushed down by a large constant
    log_q_s = F.log_softmax(s - _NON_TARGET_OFFSET * gt_mask, dim=1)
    log_q_t = F.log_softmax(t - _NON_TARGET_OFFSET * gt_mask, dim=1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)

    return (alpha * tckd + beta * nckd) * temperature**2


# --------------------------------------------------------------------------- feature-based


_POOLS = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}


def _attention_map(feature: Tensor) -> Tensor:
    """``normalize_L2(flatten(mean_c f^2))``, ``[B, prod(spatial)]``."""
    return F.normalize(feature.pow(2).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Attention transfer (reference code form): ``mean((Q(f_s) - Q(f_t))^2)``.

    ``Q(f) = F.normalize(f.pow(2).mean(1).flatten(1))``. Features are ``[B, C, L]``,
    ``[B, C, H, W]`` or ``[B, C, D, H, W]``; channel counts may differ. Where spatial sizes
    differ, the *feature map* with the larger size is adaptive-average-pooled down to the
    smaller size before Q is taken (per spatial dimension: each dim goes to the minimum of the
    two sizes). No beta factor is applied.
    """
    what = "attention_transfer_loss"
    if student_feature.dim() not in _POOLS or teacher_feature.dim() != student_feature.dim():
        raise ValueError(
            f"{what}: features must both be [B, C, *spatial] with 1-3 spatial dims, got "
            f"student shape {tuple(student_feature.shape)}, "
            f"teacher shape {tuple(teacher_feature.shape)}"
        )
    _check_batch(student_feature, teacher_feature, what)
    s, t = _upcast(student_feature, teacher_feature)
    size = tuple(min(a, b) for a, b in zip(s.shape[2:], t.shape[2:]))
    pool = _POOLS[s.dim()]
    if tuple(s.shape[2:]) != size:
        s = pool(s, size)
    if tuple(t.shape[2:]) != size:
        t = pool(t, size)
    return (_attention_map(s) - _attention_map(t)).pow(2).mean()


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix with a zero diagonal (RepDistiller's ``pdist``)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def _distance_potential(e: Tensor) -> Tensor:
    """Pairwise distances divided by the mean of the positive ones (``0`` if there are none)."""
    d = _pairwise_distances(e)
    positive = d > 0
    mu = d.sum() / positive.sum().clamp(min=1)
    return d / mu.clamp(min=torch.finfo(d.dtype).tiny)


def _angle_potential(e: Tensor) -> Tensor:
    """``[B, B, B]`` tensor ``<unit(e_i - e_j), unit(e_k - e_j)>`` indexed ``[j, i, k]``.

    Degenerate triples (``i == j`` or ``k == j``) give ``0`` (unit of a zero vector is 0).
    """
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # [j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def _flatten_pair(student: Tensor, teacher: Tensor, what: str) -> tuple[Tensor, Tensor]:
    _check_embeddings(student, teacher, what)
    s, t = _upcast(student, teacher)
    return s.flatten(1), t.flatten(1)


def rkd_distance_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """RKD distance term: ``smooth_l1(psi_D(student), psi_D(teacher))``, mean over ``B^2`` pairs.

    ``psi_D = ||e_i - e_j|| / mu``, ``mu`` the mean of the positive (off-diagonal) distances;
    the teacher side is computed under ``no_grad``. Embeddings are flattened to ``[B, D]``.
    """
    s, t = _flatten_pair(student_embedding, teacher_embedding, "rkd_distance_loss")
    with torch.no_grad():
        t_d = _distance_potential(t)
    return F.smooth_l1_loss(_distance_potential(s), t_d)


def rkd_angle_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """RKD angle term: ``smooth_l1(psi_A(student), psi_A(teacher))``, mean over all ``B^3``
    triples ``(i, j, k)`` (degenerate ones included as in the reference code, where they are 0).

    The teacher side is computed under ``no_grad``. Memory is O(B^2 * D + B^3).
    """
    s, t = _flatten_pair(student_embedding, teacher_embedding, "rkd_angle_loss")
    with torch.no_grad():
        t_a = _angle_potential(t)
    return F.smooth_l1_loss(_angle_potential(s), t_a)


def rkd_loss(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD: ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``."""
    return distance_weight * rkd_distance_loss(student_embedding, teacher_embedding) + angle_weight * rkd_angle_loss(
        student_embedding, teacher_embedding
    )


def _conditional_probabilities(x: Tensor, eps: float) -> Tensor:
    x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer with the cosine kernel ``K = (cos + 1) / 2``.

    Exactly RepDistiller's ``cosine_similarity_loss``: rows are scaled by ``1/(||x|| + eps)``,
    kernel rows normalised to sum to 1 (teacher ``t``, student ``s``), and
    ``loss = mean_ij(t_ij * log((t_ij + eps) / (s_ij + eps)))`` - a mean over all ``B^2``
    entries, i.e. the row-wise KL averaged over rows and divided once more by ``B``.
    Embeddings are flattened to ``[B, D]``.
    """
    s, t = _flatten_pair(student_embedding, teacher_embedding, "pkt_loss")
    p_s = _conditional_probabilities(s, eps)
    p_t = _conditional_probabilities(t, eps)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))
