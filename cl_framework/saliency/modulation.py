"""The modulation ("MNP") modules: combine a classifier pre-activation ``a`` with saliency ``s``.

The backbone applies its ReLU to what a tap modifier returns, so each module returns the
*pre-activation* replacement and the network computes ``h = ReLU(module(a, s))``:

* ``multiply`` (SER's default): ``a * s`` -> ``h = ReLU(a * s)``; no parameters.
* ``aggregate``: ``BN(Conv3x3([a; s]))`` (2C -> C), learnable, trained by the main optimizer.
* ``dwseparable``: ``BN(Conv1x1(DepthwiseConv3x3([a; s])))``, learnable.

Deviation: the official ``aggregate`` conv has no padding (each site shrinks the map by two
pixels); here it is padded so the stage output keeps its shape, which the tap contract requires
and small inputs (32 px, five sites) need.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("multiply", "aggregate", "dwseparable")


class Multiply(nn.Module):
    def forward(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return a * s


class Aggregate(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(torch.cat([a, s], 1)))


class DWSeparable(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            2 * channels, 2 * channels, 3, padding=1, groups=2 * channels, bias=False
        )
        self.pointwise = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(torch.cat([a, s], 1))))


def build_modulation(mode: str, channels: int) -> nn.Module:
    if mode == "multiply":
        return Multiply()
    if mode == "aggregate":
        return Aggregate(channels)
    if mode == "dwseparable":
        return DWSeparable(channels)
    raise ValueError(f"unknown modulation mode {mode!r}; use one of {MODES}")
