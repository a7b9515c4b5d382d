"""TwF's loss pieces as pure functions on tensors (reference: ``shared/reference/twf.md`` §2.4-2.6).

Shapes: feature maps and masks are ``(B, C, H, W)``; 2-D taps (an MLP) are viewed as
``(B, C, 1, 1)`` by the caller.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6
MARGIN_EPS = 1e-6


def teacher_margin(fm_t: torch.Tensor, eps: float = MARGIN_EPS) -> torch.Tensor:
    """Per-channel "overhaul" margin (Heo et al. 2019): mean of the negative entries of channel c
    over batch and space, ``(1, C, 1, 1)``; 0 for a channel without negative entries."""
    negative = (fm_t < 0).to(fm_t.dtype)
    total = (fm_t * negative).sum(dim=(0, 2, 3), keepdim=True)
    count = negative.sum(dim=(0, 2, 3), keepdim=True)
    return total / (count + eps)


def apply_teacher_margin(fm_t: torch.Tensor) -> torch.Tensor:
    """``max(F_t, m_c)``: teacher responses below the channel's margin are raised to it."""
    return torch.maximum(fm_t, teacher_margin(fm_t))


def spatial_normalize(fm: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Per-sample, per-channel L2 normalisation over (H, W): ``F / (||F||_2 + eps)``."""
    return fm / (torch.linalg.vector_norm(fm, dim=(2, 3), keepdim=True) + eps)


def partial_l2(fm_s: torch.Tensor, fm_t: torch.Tensor) -> torch.Tensor:
    """Element-wise partial L2: ``(s - t)^2``, zero where ``s <= t`` and ``t <= 0`` (both
    "inactive": the student is not pushed up to a negative teacher value)."""
    inactive = (fm_s <= fm_t) & (fm_t <= 0)
    return (fm_s - fm_t).pow(2) * (~inactive).to(fm_s.dtype)


def fp_distance(
    fm_s: torch.Tensor, fm_t: torch.Tensor, mask: torch.Tensor, use_margin: bool = True
) -> torch.Tensor:
    """The masked feature-propagation distance of one layer.

    ``d = mean_b sum_c mean_{h,w} M * D`` with ``D = partial_l2(norm(F_s), norm(max(F_t, m)))``.
    ``fm_t`` is the raw teacher map; the margin is computed over every row given.
    """
    if use_margin:
        fm_t = apply_teacher_margin(fm_t)
    dist = partial_l2(spatial_normalize(fm_s), spatial_normalize(fm_t))
    return (mask * dist).mean(dim=(2, 3)).sum(dim=1).mean()


def diversity_loss(masks: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Uniformity term on the masks of N samples (reference §2.5), without its weight.

    ``v_i = GAP(M_i)``; ``(1/N) sum_i log sum_j exp(v_i . v_j / T) - 1/T - log N``. Zero for
    no mask.
    """
    n = masks.shape[0]
    if n == 0:
        return masks.sum() * 0.0
    v = masks.mean(dim=(2, 3)) if masks.dim() == 4 else masks
    logits = v @ v.t() / temperature
    return torch.logsumexp(logits, dim=1).mean() - 1.0 / temperature - math.log(n)


def mask_replay_loss(z0: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of the attention's logit 0 against a stored binary mask (mean)."""
    return F.binary_cross_entropy_with_logits(z0, stored.to(z0.dtype))
