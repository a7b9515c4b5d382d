"""SER's saliency loss: per-image KL divergence between sum-normalised maps."""

from __future__ import annotations

import torch


def normalise_to_sum_one(maps: torch.Tensor) -> torch.Tensor:
    """(B, ...) non-negative maps -> float maps summing to 1 per row (shifted if negative).

    An all-zero map stays all-zero (and contributes no loss).
    """
    flat = maps.flatten(1).float()
    low = flat.min(1, keepdim=True).values
    flat = torch.where(low < 0, flat - low, flat)
    total = flat.sum(1, keepdim=True)
    return flat / total.clamp_min(torch.finfo(flat.dtype).tiny)


def kl_saliency(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``sum Q log(eps + Q / (P + eps))``, P and Q summing to one.

    ``predicted``: (B, 1, H, W) maps in (0, 1) (the decoder's sigmoid output); ``target``:
    (B, 1, H, W) target maps of any non-negative scale (uint8 or float). ``eps`` is the float
    machine epsilon, as in the official code.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} vs target {tuple(target.shape)}")
    eps = torch.finfo(predicted.dtype).eps
    p = predicted.flatten(1)
    p = p / p.sum(1, keepdim=True)
    q = normalise_to_sum_one(target).to(p.dtype)
    return (q * torch.log(eps + q / (p + eps))).sum(1).mean()
