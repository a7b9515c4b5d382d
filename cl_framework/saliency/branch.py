"""SAM / SER's saliency branch: an encoder with the classifier's architecture + a UNISAL decoder.

Following the official SER code (see ``shared/reference/perceivelab-methods.md`` §2.2), the
encoder is a copy of the classifier's backbone whose *pre-activation* tap maps (stem, layer1..
layer4 for the CIFAR ResNets) are both the modulation signals and the decoder's skip inputs. The
decoder is UNISAL's, without the recurrent part and without Gaussian priors:

* ReLU on every skip input;
* E4 -> inverted residual (C4 -> C4/2, expansion 1) -> bilinear upsampling to E3's size;
* concat with skip(E3) = 1x1 (C3 -> 2 C3), BN, ReLU6, Dropout2d(0.6), 1x1 (-> C3/2), BN;
* inverted residual (C4/2 + C3/2 -> C3/2, expansion 2) -> bilinear upsampling to E2's size;
* concat with skip(E2) (C2 -> 2 C2 -> C2/2); inverted residual (-> C2/2, expansion 2);
* 1x1 "adaptation" conv to one channel, nearest resize to the input size, sigmoid.

For the 64-wide ResNet-18 these are exactly the official 512->256, 256->512->128, 384->128,
128->256->64, 192->64 and 64->1 layers; narrower backbones scale every width with the encoder.
Decoder BatchNorms use momentum 0.01, as UNISAL's. Upsampling goes to the skip map's size rather
than by a fixed factor 2, which is the same for even sizes and also works for odd ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.backbones.taps import Backbone, TapContext
from cl_framework.errors import ConfigError

_NESTED_STATE_KEYS = ("model_state_dict", "state_dict", "model")


class InvertedResidual(nn.Module):
    """MobileNet-v2 inverted residual (stride 1): [1x1 expand] -> 3x3 depthwise -> 1x1 project."""

    def __init__(self, inp: int, oup: int, expansion: int, bn_momentum: float) -> None:
        super().__init__()
        hidden = inp * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden, momentum=bn_momentum),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, momentum=bn_momentum),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup, momentum=bn_momentum),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


def _skip_path(channels: int, dropout: float, bn_momentum: float) -> nn.Sequential:
    """UNISAL's skip adaptation: 1x1 (C -> 2C), BN, ReLU6, Dropout2d, 1x1 (2C -> C/2), BN."""
    return nn.Sequential(
        nn.Conv2d(channels, 2 * channels, 1, bias=False),
        nn.BatchNorm2d(2 * channels, momentum=bn_momentum),
        nn.ReLU6(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(2 * channels, channels // 2, 1, bias=False),
        nn.BatchNorm2d(channels // 2, momentum=bn_momentum),
    )


class UnisalDecoder(nn.Module):
    """Decodes the last three encoder maps (E2, E3, E4) into one saliency map in (0, 1)."""

    def __init__(
        self,
        channels: tuple[int, int, int],
        dropout: float = 0.6,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        c2, c3, c4 = channels
        if min(c2, c3, c4) < 2:
            raise ValueError(f"decoder inputs need >= 2 channels each, got {channels}")
        self.post4 = InvertedResidual(c4, c4 // 2, expansion=1, bn_momentum=bn_momentum)
        self.skip3 = _skip_path(c3, dropout, bn_momentum)
        self.post3 = InvertedResidual(c4 // 2 + c3 // 2, c3 // 2, 2, bn_momentum)
        self.skip2 = _skip_path(c2, dropout, bn_momentum)
        self.post2 = InvertedResidual(c3 // 2 + c2 // 2, c2 // 2, 2, bn_momentum)
        self.adaptation = nn.Conv2d(c2 // 2, 1, 1)

    def forward(
        self,
        e2: torch.Tensor,
        e3: torch.Tensor,
        e4: torch.Tensor,
        out_size: tuple[int, int],
    ) -> torch.Tensor:
        x = self.post4(F.relu(e4))
        x = F.interpolate(x, size=e3.shape[-2:], mode="bilinear", align_corners=False)
        x = self.post3(torch.cat([x, self.skip3(F.relu(e3))], 1))
        x = F.interpolate(x, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        x = self.post2(torch.cat([x, self.skip2(F.relu(e2))], 1))
        x = self.adaptation(x)
        x = F.interpolate(x, size=out_size, mode="nearest")
        return torch.sigmoid(x)


class SaliencyBranch(nn.Module):
    """Encoder (a backbone with taps) + UNISAL decoder.

    ``forward(x)`` returns the predicted map (B, 1, H, W) in (0, 1) and the encoder's
    pre-activation tap maps by name (the modulation signals ``s_k``).
    """

    def __init__(
        self,
        encoder: Backbone,
        input_shape: tuple[int, int, int],
        dropout: float = 0.6,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tap_names: tuple[str, ...] = tuple(encoder.tap_names)
        shapes = tap_shapes(encoder, input_shape)
        spatial = [name for name in self.tap_names if len(shapes[name]) == 3]
        if len(spatial) < 3:
            raise ConfigError(
                "backbone.name",
                f"SAM's saliency decoder needs at least three convolutional feature taps; "
                f"this backbone has {dict(shapes)}",
                fix="use a convolutional backbone such as resnet18 or reduced_resnet18",
            )
        self.decoder_inputs: tuple[str, str, str] = (spatial[-3], spatial[-2], spatial[-1])
        self.tap_shapes = shapes
        channels = tuple(shapes[name][0] for name in self.decoder_inputs)
        self.decoder = UnisalDecoder(channels, dropout=dropout, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ctx = TapContext(record=True)
        self.encoder(x, ctx)
        taps = ctx.records
        e2, e3, e4 = (taps[name] for name in self.decoder_inputs)
        saliency = self.decoder(e2, e3, e4, out_size=(x.shape[-2], x.shape[-1]))
        return saliency, taps

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())


def tap_shapes(backbone: Backbone, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every tap for inputs of ``input_shape`` (one dry eval forward)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            ctx = TapContext(record=True)
            device = next(iter(backbone.parameters())).device
            backbone(torch.zeros((1, *input_shape), device=device), ctx)
    finally:
        backbone.train(was_training)
    return {name: tuple(t.shape[1:]) for name, t in ctx.records.items()}


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialise every layer with its own default init, drawing from a private seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in module.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset) and layer is not module:
                reset()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.reset_running_stats()


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file (bare, or nested under model_state_dict / state_dict)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(key, f"checkpoint '{file}' does not exist", fix="give an existing file")
    payload: Any = torch.load(file, map_location="cpu", weights_only=True)
    for nested in _NESTED_STATE_KEYS:
        if isinstance(payload, Mapping) and nested in payload:
            payload = payload[nested]
            break
    if not isinstance(payload, Mapping):
        raise ConfigError(key, f"'{file}' holds no state dict", fix="save branch.state_dict()")
    return {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}


def load_branch(branch: SaliencyBranch, path: str | Path, key: str) -> None:
    """Load encoder + decoder weights saved from a :class:`SaliencyBranch` (strict)."""
    state = read_state_dict(path, key)
    try:
        branch.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            key,
            f"checkpoint does not match the saliency branch of this backbone "
            f"({str(exc).splitlines()[0][:200]})",
            fix="save the checkpoint from a SaliencyBranch built on the same backbone",
        ) from None
