"""Dark Experience Replay (DER) and DER++ (Buzzega et al., NeurIPS 2020).

The buffer stores, with each un-augmented stream row, the logits the network produced for it
when it was seen. DER adds ``alpha * MSE(f(x_b), z_b)`` on a replay draw; DER++ adds
``beta * CE(f(x_b'), y_b')`` on a second, independent draw (as in Mammoth's ``derpp``).

The draws are attached to the step's batch as side rows (``Batch.with_side``): the engine
forwards them in the stream's pass where rows do not interact (an MLP), in their own passes
otherwise (BatchNorm), so the loss is the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_framework.engine.plugin import Batch, ForwardOutput
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin


@register_strategy
class DER(RehearsalPlugin):
    name = "der"

    @dataclass
    class Config:
        alpha: float = 0.3
        minibatch_size: int = 32

    def buffer_fields(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        return {"logits": out.logits}

    def prepare_batch(self, batch: Batch) -> Batch:
        replay = self.draw(self.cfg.minibatch_size, ("x", "logits"))
        if replay is None:
            return batch
        return batch.with_side("der", replay["x"], logits=replay["logits"])

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        if "der" not in out.sides:
            return {}
        logits = out.sides["der"].logits
        return {
            "der_mse": self.cfg.alpha * F.mse_loss(logits, batch.sides["der"].targets["logits"])
        }


@register_strategy
class DERpp(DER):
    name = "derpp"

    @dataclass
    class Config:
        alpha: float = 0.5
        beta: float = 0.5
        minibatch_size: int = 10

    def prepare_batch(self, batch: Batch) -> Batch:
        batch = super().prepare_batch(batch)
        replay = self.draw(self.cfg.minibatch_size, ("x", "y"))
        if replay is None:
            return batch
        return batch.with_side("derpp_ce", replay["x"], y=replay["y"])

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        terms = dict(super().loss_terms(batch, out))
        if "derpp_ce" in out.sides:
            logits, y = out.sides["derpp_ce"].logits, batch.sides["derpp_ce"].targets["y"]
            terms["derpp_ce"] = self.cfg.beta * F.cross_entropy(logits, y)
        return terms
