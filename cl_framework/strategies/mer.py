"""Meta-Experience Replay (MER; Riemer et al., ICLR 2019), as in Mammoth's ``mer`` (the code
behind the DER paper's Table 2).

Per stream batch (one sample in the published setting, ``trainer.batch_size: 1``):
``batch_num`` replay draws of ``minibatch_size`` rows are taken up front, each joined with the
stream rows. The parameters ``theta_A`` are saved; for each joined batch the parameters
``theta_W`` are saved, one SGD step is taken on its cross-entropy and the parameters become
``theta_W + beta (theta - theta_W)`` (within-batch Reptile); after all of them,
``theta_A + gamma (theta - theta_A)`` (across-batch Reptile). The stream rows enter the
reservoir buffer after the inner steps and before the across-batch update, as in Mammoth.

The first joined batch is the engine's ordinary step (the replay rows are appended to the
batch); the others are :meth:`CLModule.extra_step` calls. With ``beta = gamma = 1`` and one
draw (Mammoth's Seq-MNIST best args) the Reptile updates are the identity and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cl_framework.engine.plugin import Batch, ForwardOutput
from cl_framework.errors import ConfigError
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import InnerStepsReplayPlugin


def flat_params(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """A detached copy of the parameters as one vector."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@torch.no_grad()
def reptile_update(params: Sequence[nn.Parameter], start: torch.Tensor, rate: float) -> None:
    """Move the parameters to ``start + rate * (theta - start)`` in place."""
    offset = 0
    for p in params:
        n = p.numel()
        begin = start[offset : offset + n].view_as(p)
        p.copy_(begin + rate * (p - begin))
        offset += n


@register_strategy
class MER(InnerStepsReplayPlugin):
    name = "mer"

    @dataclass
    class Config:
        minibatch_size: int = 128  # replay rows joined with the stream rows in each inner batch
        beta: float = 1.0  # within-batch Reptile rate
        gamma: float = 1.0  # across-batch Reptile rate
        batch_num: int = 1  # inner batches (replay draws) per stream batch

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        for key in ("minibatch_size", "batch_num"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"strategy.mer.{key}", "must be >= 1", f"set {key}: 1")
        for key in ("beta", "gamma"):
            if not 0 < getattr(cfg, key) <= 1:
                raise ConfigError(f"strategy.mer.{key}", "must be in (0, 1]", f"set {key}: 1.0")
        self._reptile = not (cfg.beta == 1 and cfg.gamma == 1)
        self._start: torch.Tensor | None = None

    def prepare_batch(self, batch: Batch) -> Batch:
        if self._reptile:
            self._start = flat_params(self.module.trainable_parameters())
        return super().prepare_batch(batch)

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        params = self.module.trainable_parameters()
        start = self._start
        if start is not None:  # first inner batch: theta_W = theta_A
            reptile_update(params, start, self.cfg.beta)
        for draw in self.later_draws():
            inner_start = flat_params(params) if self._reptile else None
            self.inner_step(batch, draw)
            if inner_start is not None:
                reptile_update(params, inner_start, self.cfg.beta)
        if start is not None:
            reptile_update(params, start, self.cfg.gamma)
        self._start = None
