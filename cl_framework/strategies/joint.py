"""Joint training: the upper bound, trained on the data of several experiences at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience, Split
from cl_framework.strategies.registry import register_strategy

MODES = ("at_end", "cumulative")


@register_strategy
class Joint(StrategyPlugin):
    """Replaces each experience's training data.

    ``at_end`` (default, the DER paper's "joint" row and Mammoth's): nothing is trained until
    the last experience, which trains on the union of all experiences; earlier rows of the
    accuracy matrix therefore show the untrained network. ``cumulative``: experience i trains
    on the union of experiences 0..i (a model that is an upper bound after every experience).
    """

    name = "joint"

    @dataclass
    class Config:
        mode: str = "at_end"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.mode not in MODES:
            raise ConfigError("strategy.joint.mode", f"unknown mode '{cfg.mode}'", f"use {MODES}")

    def train_data(self, experience: Experience, split: Split) -> Split:
        experiences = self.ctx.scenario.experiences
        last = len(experiences) - 1
        if self.cfg.mode == "at_end":
            if experience.index < last:
                return Split(x=split.x[:0], y=split.y[:0])
            chosen = experiences
        else:
            chosen = experiences[: experience.index + 1]
        return Split(
            x=torch.cat([e.train.x for e in chosen]),
            y=torch.cat([e.train.y for e in chosen]),
            t=torch.cat([e.train.task_labels(e.task_label) for e in chosen]),
        )
