"""Spare output heads that no class ever takes: the control for methods with extra heads.

Methods that add output units (Dream2Learn's dream heads, the auxiliary stream's classes) are
evaluated class-IL over *every* head, and their forward transfer subtracts the accuracy of the
randomly initialised network over those heads. A base run with fewer heads therefore has a
different random-init baseline and a different argmax. ``strategy=[er_ace, spare_heads]`` with
``count`` equal to the method's extra heads gives the base the same output layer; the spare heads
stay free (never assigned, never trained by a class), so a prediction on one is an error, as it
is for an unused dream head.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.strategies.registry import register_strategy


@register_strategy
class SpareHeads(StrategyPlugin):
    name = "spare_heads"

    @dataclass
    class Config:
        count: int = 4  # output units beyond one per benchmark class

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.count < 0:
            raise ConfigError("strategy.spare_heads.count", f"must be >= 0, got {cfg.count}")

    def extra_heads(self) -> int:
        return self.cfg.count
