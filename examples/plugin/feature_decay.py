"""An out-of-tree strategy plug-in: a penalty on the squared norm of the pooled features.

It lives outside the package and composes with the built-in strategies. From this folder:

    clf-train --config-dir conf extra_modules=[feature_decay.py] strategy=[er,feature_decay]

``extra_modules`` imports this file (a path, or a module name importable from the current
directory); ``--config-dir conf`` adds ``conf/strategy/feature_decay.yaml`` to the config
search path, so ``strategy=[...,feature_decay]`` and ``strategy.feature_decay.weight=...`` work
like any built-in strategy's, typos included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.strategies import register_strategy


@register_strategy
class FeatureDecay(StrategyPlugin):
    """``weight * mean ||features||^2`` over the stream rows of each step."""

    name = "feature_decay"

    @dataclass
    class Config:  # validated against strategy.feature_decay.* before training
        weight: float = 0.01

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.weight < 0:
            raise ConfigError("strategy.feature_decay.weight", "must be >= 0")

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        stream = out.features[: batch.n_stream]
        return {"feature_decay": self.cfg.weight * stream.pow(2).sum(dim=1).mean()}
