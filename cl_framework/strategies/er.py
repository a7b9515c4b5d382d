"""Experience Replay (ER): buffer rows are concatenated to the stream batch, one cross-entropy.

As in Mammoth's ``er``: reservoir buffer of un-augmented stream samples; each step draws
``minibatch_size`` rows (augmented) and trains on stream + replay with a single CE.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_framework.engine.plugin import Batch
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin


@register_strategy
class ER(RehearsalPlugin):
    name = "er"

    @dataclass
    class Config:
        minibatch_size: int = 32

    def prepare_batch(self, batch: Batch) -> Batch:
        replay = self.draw(self.cfg.minibatch_size, ("x", "y", "t"))
        if replay is None:
            return batch
        return batch.append(replay["x"], replay["y"], replay["t"])
