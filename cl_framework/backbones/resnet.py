"""CIFAR-style ResNet-18 as in Mammoth (and GEM's reduced variant).

3x3 stride-1 conv + BN stem without max-pool, four stages of two BasicBlocks with widths
``width * (1, 2, 4, 8)`` and strides 1/2/2/2, global average pooling. Layers keep PyTorch's
default initialisation, as Mammoth does. Taps ``stem``, ``layer1``..``layer4`` are the
pre-activations SAM/SER and TwF use: the stem's BN output, and each stage's last residual sum
before its final ReLU. The ReLU is applied to the (possibly replaced) tap value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.errors import ConfigError

from .registry import register_backbone
from .taps import Backbone, TapContext


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a (1x1 conv + BN when the shape changes) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward_pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum before the block's final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.forward_pre_activation(x))


class CifarResNet(Backbone):
    """Mammoth's CIFAR ResNet with BasicBlocks; ``num_blocks`` per stage."""

    tap_names = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        width: int = 64,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(
                "backbone.width", f"must be an int >= 1, got {width!r}", fix="e.g. 64"
            )
        if len(num_blocks) != 4 or min(num_blocks) < 1:
            raise ValueError(f"num_blocks must be 4 positive ints, got {tuple(num_blocks)}")
        in_channels = int(input_shape[0])
        self.width = width
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, (n, stride) in enumerate(zip(num_blocks, (1, 2, 2, 2), strict=True)):
            planes = width * 2**i
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = in_planes

    def forward(self, x: torch.Tensor, taps: TapContext | None = None) -> torch.Tensor:
        x = F.relu(self.tap("stem", self.bn1(self.conv1(x)), taps))
        for name in self.tap_names[1:]:
            stage: nn.Sequential = getattr(self, name)
            for block in stage[:-1]:
                x = block(x)
            pre = stage[-1].forward_pre_activation(x)
            x = F.relu(self.tap(name, pre, taps))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


@register_backbone("resnet18")
def resnet18(input_shape: tuple[int, int, int], width: int = 64) -> CifarResNet:
    """CIFAR-style ResNet-18 (Mammoth ``resnet18``); feature_dim = 8 * width."""
    return CifarResNet(input_shape, width=width)


@register_backbone("reduced_resnet18")
def reduced_resnet18(input_shape: tuple[int, int, int]) -> CifarResNet:
    """GEM / Mammoth reduced ResNet-18: width 20, feature_dim 160."""
    return CifarResNet(input_shape, width=20)
