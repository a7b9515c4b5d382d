"""The MNIST MLP of the DER paper / Mammoth's ``MNISTMLP``: two hidden ReLU layers of 100 units."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.errors import ConfigError

from .registry import register_backbone
from .taps import Backbone, TapContext


@register_backbone("mlp")
class MLP(Backbone):
    """flatten -> [Linear(., hidden) -> ReLU] * n_layers; taps ``fc1``.. are pre-activation.

    Initialisation follows Mammoth's ``xavier`` (applied by ``MNISTMLP.reset_parameters`` to
    the hidden layers *and* the classifier, see :meth:`init_head`): xavier-uniform weights with
    gain 1 and zero biases, not PyTorch's default Linear init, so results are comparable with
    the published DER/Mammoth numbers.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], hidden: int = 100, n_layers: int = 2
    ) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError("backbone.hidden", f"must be >= 1, got {hidden}", fix="e.g. 100")
        if n_layers < 1:
            raise ConfigError("backbone.n_layers", f"must be >= 1, got {n_layers}", fix="e.g. 2")
        in_features = math.prod(input_shape)
        sizes = [in_features] + [hidden] * n_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.tap_names = tuple(f"fc{i + 1}" for i in range(n_layers))
        self.feature_dim = hidden
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (Mammoth's ``xavier``)."""
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def init_head(self, head: nn.Linear) -> None:
        """Mammoth's ``MNISTMLP`` applies ``xavier`` to its classifier too."""
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor, taps: TapContext | None = None) -> torch.Tensor:
        x = x.flatten(1)
        for name, layer in zip(self.tap_names, self.layers, strict=True):
            x = F.relu(self.tap(name, layer(x), taps))
        return x
