"""Signature-patch probe (SER's robustness experiment): a spurious class cue in training images.

Every training image of class ``c`` (a ``fraction`` of them) gets the class's "signature": a
fixed random binary ``patch_size`` x ``patch_size`` pattern at a fixed class-specific position.
Test images stay clean, so a model that learnt the shortcut loses accuracy at test time.
Composes before any strategy: ``strategy=[er_ace, signature_probe]`` vs
``strategy=[er_ace, signature_probe, sam]`` (SAM must come after the probe, so that its target
maps, computed on the clean images, follow the patched rows). The buffer stores the patched
stream images, as it would with a dataset that carries the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience, Split
from cl_framework.strategies.registry import register_strategy


def class_signature(
    label: int, shape: tuple[int, int, int], patch_size: int, seed: int
) -> tuple[torch.Tensor, int, int]:
    """The (C, p, p) uint8 pattern (0 / 255) of ``label`` and its top-left corner (row, col)."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(seed * 100_003 + label)
    pattern = (torch.rand((c, patch_size, patch_size), generator=gen) < 0.5).to(torch.uint8) * 255
    row = int(torch.randint(0, h - patch_size + 1, (1,), generator=gen))
    col = int(torch.randint(0, w - patch_size + 1, (1,), generator=gen))
    return pattern, row, col


def add_signatures(
    x: torch.Tensor, y: torch.Tensor, patch_size: int, seed: int, chosen: torch.Tensor
) -> torch.Tensor:
    """A copy of ``x`` with each ``chosen`` row's class signature pasted in."""
    out = x.clone()
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    for label in torch.unique(y[chosen]).tolist():
        rows = (chosen & (y == label)).nonzero().squeeze(1)
        pattern, r, c = class_signature(int(label), shape, patch_size, seed)
        out[rows, :, r : r + patch_size, c : c + patch_size] = pattern
    return out


@register_strategy
class SignatureProbe(StrategyPlugin):
    name = "signature_probe"
    needs_in_memory_data = True  # pastes patches into the training tensors

    @dataclass
    class Config:
        patch_size: int = 4  # side of the square signature, in pixels
        fraction: float = 1.0  # share of each experience's training images that carry it
        seed: int = 0  # seed of the signatures (pattern, position) and of the chosen rows

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.patch_size < 1:
            raise ConfigError("strategy.signature_probe.patch_size", "must be >= 1")
        if not 0.0 < cfg.fraction <= 1.0:
            raise ConfigError("strategy.signature_probe.fraction", "must be in (0, 1]")

    def train_data(self, experience: Experience, split: Split) -> Split:
        n, _, h, w = split.x.shape
        if self.cfg.patch_size > min(h, w):
            raise ConfigError(
                "strategy.signature_probe.patch_size",
                f"{self.cfg.patch_size} exceeds the {h}x{w} images",
            )
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_009 + experience.index)
        chosen = torch.rand(n, generator=gen) < self.cfg.fraction
        x = add_signatures(split.x, split.y, self.cfg.patch_size, self.cfg.seed, chosen)
        return Split(x=x, y=split.y, t=split.t)
