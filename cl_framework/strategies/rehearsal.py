"""Shared base of the rehearsal strategies: drawing augmented rows from the replay buffer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cl_framework.engine.plugin import StrategyPlugin


class RehearsalPlugin(StrategyPlugin):
    """A plug-in that replays from the run's one shared buffer.

    The engine offers every stream row to the buffer once per step (with the fields that the
    plug-ins' ``buffer_fields`` add); rehearsal plug-ins only draw from it. Inputs are stored
    un-augmented and are augmented at draw time, as in Mammoth.
    """

    uses_buffer = True

    def draw(self, n: int, fields: Sequence[str] = ("x", "y")) -> dict[str, torch.Tensor] | None:
        """``n`` rows sampled without replacement (``x`` augmented), or None if empty."""
        if self.buffer.is_empty or n <= 0:
            return None
        sample = self.buffer.sample(n, fields=list(fields))
        if "x" in sample:
            sample["x"] = self.module.transform.train(sample["x"])
        return sample
