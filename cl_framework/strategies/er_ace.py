"""ER-ACE (Caccia et al., 2022): asymmetric cross-entropy for replay.

Mammoth's ``er_ace``: from the second experience on, the stream cross-entropy only sees the
logits of classes present in the current batch plus every class index >= the largest class
seen so far, unless that class is the last head (then only the present ones: Mammoth's
``if seen_so_far.max() < num_classes - 1``, which matters when dream or auxiliary rows reach the
last head early); replay rows get an ordinary cross-entropy as a separate term.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyContext
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin


@register_strategy
class ERACE(RehearsalPlugin):
    name = "er_ace"

    @dataclass
    class Config:
        minibatch_size: int = 32

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        # heads seen in any stream batch so far (a buffer: checkpointed, moves with the model)
        self.register_buffer("seen_heads", torch.zeros(ctx.heads.n_heads, dtype=torch.bool))

    def logit_mask(self, batch: Batch) -> torch.Tensor | None:
        n_heads = self.module.heads.n_heads
        seen = self.seen_heads
        present = torch.zeros(n_heads, dtype=torch.bool, device=batch.y.device)
        present[batch.y] = True
        seen |= present
        if self.module.experience_index == 0:
            return None
        # every head from the largest seen index upwards stays visible, unless the largest is
        # the last head (no host sync)
        idx = torch.arange(n_heads, device=seen.device)
        largest = torch.where(seen, idx, torch.zeros_like(idx)).max()
        return present | ((idx >= largest) & (largest < n_heads - 1))

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        if self.module.experience_index == 0:
            return {}
        replay = self.draw(self.cfg.minibatch_size, ("x", "y"))
        if replay is None:
            return {}
        logits = self.module.run_forward(replay["x"], "replay").logits
        return {"replay_ce": F.cross_entropy(logits, replay["y"])}
