"""Batched, on-device image transforms: uint8 -> float, augmentation, normalisation.

Images live in memory as uint8 (or are decoded to uint8 batch by batch from disk); augmentation
runs on whole batches on the training device (as Mammoth does with kornia), so replayed buffer
rows, stored un-augmented, get fresh augmentations each time they are drawn.

Training: random-resized crop (or center crop), random crop after padding, horizontal flip,
then scaling to [0, 1] and normalisation. Evaluation (:meth:`BatchTransform.to_float`): center
crop, scaling, normalisation. With ``random_resized_crop`` + ``center_crop`` this is the
ImageNet-style protocol of L2P / CODA-Prompt (RandomResizedCrop + flip for training,
Resize + CenterCrop for testing), the resize being the one done when images are loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomResizedCrop:
    """torchvision's ``RandomResizedCrop`` parameters: output ``size`` (H, W), the crop's area
    as a fraction of the image (``scale``) and its aspect ratio w / h (``ratio``, drawn
    log-uniformly)."""

    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) > 0, got {self.size!r}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale!r}")
        lo, hi = self.ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio!r}")


class BatchTransform:
    """uint8 (B, C, H, W) -> float in [0, 1], optionally augmented, optionally normalised.

    ``random_resized_crop`` crops each training image to a random area / aspect ratio and
    resizes it to a fixed size (batched: one ``roi_align``); ``center_crop`` (H, W) is the
    evaluation crop, also applied in training when there is no random-resized crop.
    ``crop_padding`` > 0 enables random crops after zero padding; ``hflip`` random horizontal
    flips. Randomness comes from a private generator per device, seeded from ``seed``.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        seed: int = 0,
        random_resized_crop: RandomResizedCrop | None = None,
        center_crop: tuple[int, int] | None = None,
    ) -> None:
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.random_resized_crop = random_resized_crop
        self.center_crop = (
            (int(center_crop[0]), int(center_crop[1])) if center_crop is not None else None
        )
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.channels_last = False  # emit NHWC-strided batches (trainer.channels_last)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.random_resized_crop is not None

    def output_size(self, height: int, width: int, train: bool) -> tuple[int, int]:
        """(H, W) of a transformed batch of ``height`` x ``width`` images."""
        if train and self.random_resized_crop is not None:
            return self.random_resized_crop.size
        if self.center_crop is not None:
            return self.center_crop
        return (height, width)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            self._generators[key] = gen
        return gen

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] and normalised (no augmentation): the eval transform
        (center-cropped first when ``center_crop`` is set)."""
        if self.center_crop is not None:
            x = self._center_crop(x)
        return self._scale(x)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] (float input is taken as already scaled), normalised."""
        out = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.mean is not None and self.std is not None:
            key = str(out.device)
            if key not in self._stats:
                shape = (1, -1, 1, 1)
                self._stats[key] = (
                    torch.tensor(self.mean, device=out.device).view(shape),
                    torch.tensor(self.std, device=out.device).view(shape),
                )
            mean, std = self._stats[key]
            out = (out - mean) / std
        if self.channels_last and out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def train(self, x: torch.Tensor) -> torch.Tensor:
        """The training transform: augment (batched) then normalise."""
        if self.random_resized_crop is not None:
            x = self._random_resized_crop(x)
        elif self.center_crop is not None:
            x = self._center_crop(x)
        if self.crop_padding > 0 or self.hflip:
            x = self._augment(x)
        return self._scale(x)

    def _center_crop(self, x: torch.Tensor) -> torch.Tensor:
        """The central (H, W) window (torchvision's ``CenterCrop`` offsets)."""
        assert self.center_crop is not None
        ch, cw = self.center_crop
        h, w = x.shape[-2:]
        if (ch, cw) == (h, w):
            return x
        if ch > h or cw > w:
            raise ValueError(f"center crop {ch}x{cw} is larger than the {h}x{w} images")
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        return x[..., top : top + ch, left : left + cw]

    def _random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's ``RandomResizedCrop`` on a whole batch, float in [0, 1] out.

        Per sample, as torchvision: up to 10 draws of (area fraction, log aspect ratio); the
        first whose rounded w x h fits the image wins; a random integer position for it; if
        none fits, the central crop with the ratio clamped into ``ratio``. All draws are
        batched tensors from the private generator. The crops are resized with
        ``torchvision.ops.roi_align`` (bilinear, ``aligned=True``: pixel centres as in
        ``F.interpolate(align_corners=False)``; shrinking crops average ceil(crop / output)^2
        samples per output pixel, an anti-aliased resize).
        """
        from torchvision.ops import roi_align

        rrc = self.random_resized_crop
        assert rrc is not None
        gen = self._generator(x.device)
        b, _, h, w = x.shape
        dev = x.device
        f64 = torch.float64
        u_area = torch.rand(b, 10, generator=gen, device=dev, dtype=f64)
        u_ratio = torch.rand(b, 10, generator=gen, device=dev, dtype=f64)
        u_top = torch.rand(b, generator=gen, device=dev, dtype=f64)
        u_left = torch.rand(b, generator=gen, device=dev, dtype=f64)
        area = h * w * (rrc.scale[0] + (rrc.scale[1] - rrc.scale[0]) * u_area)
        log_lo, log_hi = math.log(rrc.ratio[0]), math.log(rrc.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
        cw = torch.round(torch.sqrt(area * aspect))
        ch = torch.round(torch.sqrt(area / aspect))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # first fitting draw (0 if none)
        cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
        # fallback (no draw fits): central crop with the aspect ratio clamped into the range
        in_ratio = w / h
        if in_ratio < rrc.ratio[0]:
            fw, fh = w, round(w / rrc.ratio[0])
        elif in_ratio > rrc.ratio[1]:
            fw, fh = round(h * rrc.ratio[1]), h
        else:
            fw, fh = w, h
        found = fits.any(1)
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        top = torch.where(found, torch.floor(u_top * (h - ch + 1)), torch.floor((h - ch) / 2))
        left = torch.where(found, torch.floor(u_left * (w - cw + 1)), torch.floor((w - cw) / 2))
        boxes = torch.stack(
            [torch.arange(b, device=dev, dtype=f64), left, top, left + cw, top + ch], 1
        ).float()
        out = roi_align(
            x.float(), boxes, rrc.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
        return out.div_(255.0) if x.dtype == torch.uint8 else out

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        gen = self._generator(x.device)
        b, _, h, w = x.shape
        if self.crop_padding > 0:
            p = self.crop_padding
            c = x.shape[1]
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=x.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=x.device)
            # One gather over the flattened padded image: output pixel (i, j) of sample n reads
            # padded pixel (dy[n] + i, dx[n] + j), i.e. flat index (dy + i) * (w + 2p) + dx + j.
            # (Several times faster than 4-way advanced indexing on CPU, identical result.)
            rows = dy.view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
            cols = dx.view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
            flat = (rows * (w + 2 * p) + cols).view(b, 1, h * w).expand(b, c, h * w)
            x = padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)
        if self.hflip:
            flip = torch.rand(b, generator=gen, device=x.device) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: gen.get_state() for key, gen in self._generators.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, gen_state in state.items():
            self._generator(torch.device(key)).set_state(gen_state)


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ``ColorJitter`` factors: brightness, contrast and saturation factors are
    drawn uniformly in ``[max(0, 1 - v), 1 + v]``, the hue shift in ``[-hue, hue]``; the whole
    jitter is applied with probability ``p`` (``RandomApply``)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p: float = 0.8


class StrongAugmentation:
    """X-DER's strong augmentation (Mammoth's ``strong_aug``) on whole batches: horizontal
    flip, random-resized crop (area ``scale``), colour jitter, random grayscale (RGB only),
    then normalisation. Input: uint8 or float-in-[0, 1] images (B, C, H, W).

    Differences from the per-image torchvision pipeline, all about randomness: the jitter's
    four adjustments run in a fixed order (brightness, contrast, saturation, hue) where
    torchvision shuffles them per image, and the hue shift, a per-image loop, is only done
    for 3-channel images (it is the identity on grayscale).
    """

    def __init__(
        self,
        size: tuple[int, int],
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        seed: int,
        scale: tuple[float, float] = (0.2, 1.0),
        jitter: ColorJitter = ColorJitter(),
        grayscale_p: float = 0.2,
    ) -> None:
        self.crop = BatchTransform(
            hflip=True, seed=seed, random_resized_crop=RandomResizedCrop(size=size, scale=scale)
        )
        self.normalise = BatchTransform(mean=mean, std=std)
        self.jitter = jitter
        self.grayscale_p = grayscale_p
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed + 1)
        return self._generators[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.crop.train(x)  # flip + random-resized crop, float in [0, 1]
        gen = self._generator(x.device)
        b, c = x.shape[:2]
        j = self.jitter

        def factor(v: float) -> torch.Tensor:
            u = torch.rand(b, 1, 1, 1, generator=gen, device=x.device)
            return max(0.0, 1.0 - v) + (1.0 + v - max(0.0, 1.0 - v)) * u

        apply = torch.rand(b, 1, 1, 1, generator=gen, device=x.device) < j.p
        out = x
        if j.brightness > 0:
            out = (out * factor(j.brightness)).clamp(0, 1)
        if j.contrast > 0:
            mean = _gray(out).mean((1, 2, 3), keepdim=True)
            f = factor(j.contrast)
            out = (f * out + (1 - f) * mean).clamp(0, 1)
        if j.saturation > 0 and c == 3:
            f = factor(j.saturation)
            out = (f * out + (1 - f) * _gray(out)).clamp(0, 1)
        if j.hue > 0 and c == 3:
            from torchvision.transforms.functional import adjust_hue

            shift = (torch.rand(b, generator=gen, device=x.device) * 2 - 1) * j.hue
            out = torch.stack(
                [adjust_hue(img, float(h)) for img, h in zip(out, shift, strict=True)]
            )
        x = torch.where(apply, out, x)
        if c == 3 and self.grayscale_p > 0:
            gray = torch.rand(b, 1, 1, 1, generator=gen, device=x.device) < self.grayscale_p
            x = torch.where(gray, _gray(x).expand_as(x), x)
        return self.normalise.to_float(x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of RGB images, the image itself for one channel; (B, 1, H, W)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
