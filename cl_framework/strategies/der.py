"""Dark Experience Replay (DER) and DER++ (Buzzega et al., NeurIPS 2020).

The buffer stores, with each un-augmented stream row, the logits the network produced for it
when it was seen. DER adds ``alpha * MSE(f(x_b), z_b)`` on a replay draw; DER++ adds
``beta * CE(f(x_b'), y_b')`` on a second, independent draw (as in Mammoth's ``derpp``).
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

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        replay = self.draw(self.cfg.minibatch_size, ("x", "logits"))
        if replay is not None:
            logits = self.module.run_forward(replay["x"], "replay").logits
            terms["der_mse"] = self.cfg.alpha * F.mse_loss(logits, replay["logits"])
        return terms


@register_strategy
class DERpp(DER):
    name = "derpp"

    @dataclass
    class Config:
        alpha: float = 0.5
        beta: float = 0.5
        minibatch_size: int = 10

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        terms = dict(super().loss_terms(batch, out))
        replay = self.draw(self.cfg.minibatch_size, ("x", "y"))
        if replay is not None:
            logits = self.module.run_forward(replay["x"], "replay").logits
            terms["derpp_ce"] = self.cfg.beta * F.cross_entropy(logits, replay["y"])
        return terms
