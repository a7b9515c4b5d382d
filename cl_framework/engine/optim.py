"""Optimizer and learning-rate scheduler built from the ``optimizer`` config group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from cl_framework.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("multistep", "exponential")


@dataclass
class OptimizerConfig:
    """``optimizer`` config group. Rebuilt at the start of every experience."""

    name: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str | None = None
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                "optimizer.name", f"unknown optimizer '{self.name}'", f"use one of {OPTIMIZERS}"
            )
        if self.lr <= 0:
            raise ConfigError("optimizer.lr", f"must be positive, got {self.lr}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ConfigError(
                "optimizer.scheduler",
                f"unknown scheduler '{self.scheduler}'",
                f"use null or one of {SCHEDULERS}",
            )


def build_optimizer(cfg: OptimizerConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


def build_scheduler(
    cfg: OptimizerConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-experience epoch scheduler (stepped at each epoch end), or None."""
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma
        )
    if cfg.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    return None
