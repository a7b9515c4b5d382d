"""Joint random crop + horizontal flip of buffer images and their stored per-layer masks.

The engine's :class:`~cl_framework.scenarios.transforms.BatchTransform` augments images only. A
replayed TwF row carries one mask per tapped layer, at the layer's (or half the layer's)
resolution, and the masks must follow the image: the same flip, and the image's crop offset
scaled to each mask's resolution. Image semantics are exactly the engine's: zero padding of
``padding`` pixels, then a crop at offset ``(dy, dx)`` in ``[0, 2 * padding]``, i.e. output
pixel ``(i, j)`` reads input pixel ``(i + dy - p, j + dx - p)`` (zero outside).

A mask of height ``h_l`` for an image of height ``H`` is shifted by
``round((dy - p) * h_l / H)`` cells (half-to-even rounding; likewise for x), zero-filled where
it leaves the map: regions that came from padding get no distillation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def shift_2d(x: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """Per-sample translation with zero fill: ``out[n, :, i, j] = x[n, :, i + sy[n], j + sx[n]]``.

    One gather over the zero-padded, flattened map (as the engine's crop), any dtype.
    """
    b, c, h, w = x.shape
    p = int(max(int(sy.abs().max()), int(sx.abs().max()))) if b else 0
    if p == 0:
        return x
    padded = F.pad(x, (p, p, p, p))
    rows = (sy + p).view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = (sx + p).view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    flat = (rows * (w + 2 * p) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


def scaled_shift(shift: torch.Tensor, size: int, image_size: int) -> torch.Tensor:
    """An image shift in pixels expressed in cells of a map of ``size`` (rounded)."""
    if size == image_size:
        return shift
    return torch.round(shift.double() * size / image_size).long()


def joint_crop_flip(
    x: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    padding: int,
    hflip: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Randomly crop (after zero padding) and flip images and their masks together.

    ``x``: (B, C, H, W) images (uint8 or float); ``masks``: name -> (B, C_l, h_l, w_l). Returns
    the augmented images and masks (same dtypes). Draws ``dy``, ``dx`` (if ``padding``) then the
    flips (if ``hflip``) from ``generator``.
    """
    b, _, h, w = x.shape
    out = dict(masks)
    device = x.device
    if padding > 0 and b:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        sy, sx = dy - padding, dx - padding
        x = shift_2d(x, sy, sx)
        for name, m in masks.items():
            out[name] = shift_2d(
                m, scaled_shift(sy, m.shape[-2], h), scaled_shift(sx, m.shape[-1], w)
            )
    if hflip and b:
        flip = torch.rand(b, generator=generator, device=device) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        for name, m in out.items():
            out[name] = torch.where(flip.view(b, 1, 1, 1), m.flip(-1), m)
    return x, out
