"""Batched, on-device image transforms: uint8 -> float, augmentation, normalisation.

Images live in memory as uint8; augmentation runs on whole batches on the training device
(as Mammoth does with kornia), so replayed buffer rows, stored un-augmented, get fresh
augmentations each time they are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class BatchTransform:
    """uint8 (B, C, H, W) -> float in [0, 1], optionally augmented, optionally normalised.

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
    ) -> None:
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.channels_last = False  # emit NHWC-strided batches (trainer.channels_last)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            self._generators[key] = gen
        return gen

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] and normalised (no augmentation): the eval transform."""
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
        if self.augments:
            x = self._augment(x)
        return self.to_float(x)

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
