"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017), as in Mammoth's ``si``.

Each parameter's importance is the path integral of the loss along its training trajectory:
per step ``omega += -g * delta_theta`` (``g`` the clipped gradient the optimizer used). At the
end of an experience ``Omega += omega / ((theta - theta*)^2 + xi)``, ``theta* <- theta``,
``omega <- 0``; the loss adds ``c * sum(Omega * (theta - theta*)^2)``. Gradients are clipped
element-wise at 1 before the step, as in Mammoth.

Deviation, argued: Mammoth accumulates ``lr * g^2``, which is ``-g * delta_theta`` exactly for
plain SGD (its setting for every DER-paper row) but not for momentum or Adam; we accumulate the
paper's ``-g * delta_theta`` from the actual parameter change, so both agree on the published
settings and ours stays the paper's quantity under other optimizers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyPlugin
from cl_framework.scenarios import Experience
from cl_framework.strategies.registry import register_strategy


@register_strategy
class SI(StrategyPlugin):
    name = "si"

    @dataclass
    class Config:
        c: float = 0.5  # penalty weight
        xi: float = 1.0  # damping of the importance normaliser
        clip_value: float | None = 1.0  # element-wise gradient clip before the step (null = off)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.omega: dict[str, torch.Tensor] = {}  # running path integral of this experience
        self.big_omega: dict[str, torch.Tensor] = {}  # accumulated importance
        self.anchor: dict[str, torch.Tensor] = {}  # theta* at the last experience end
        self._before: dict[str, torch.Tensor] = {}
        self._grad: dict[str, torch.Tensor] = {}

    def setup(self, ctx) -> None:  # type: ignore[override]
        super().setup(ctx)
        # theta* of the first experience: the initial weights (as Mammoth's checkpoint)
        self.anchor = {k: p.detach().clone() for k, p in self._params().items()}

    def _params(self) -> dict[str, nn.Parameter]:
        module = self.module
        named = [*(("backbone." + k, p) for k, p in module.backbone.named_parameters())]
        named += [("head." + k, p) for k, p in module.head.named_parameters()]
        return {k: p for k, p in named if p.requires_grad}

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        if not self.big_omega:
            return {}
        penalty = out.logits.new_zeros(())
        if next(iter(self.big_omega.values())).device != out.logits.device:  # after a resume
            device = out.logits.device
            self.big_omega = {k: v.to(device) for k, v in self.big_omega.items()}
            self.anchor = {k: v.to(device) for k, v in self.anchor.items()}
        for k, p in self._params().items():
            penalty = penalty + (self.big_omega[k] * (p - self.anchor[k]) ** 2).sum()
        return {"si_penalty": self.cfg.c * penalty}

    def before_optimizer_step(self) -> None:
        params = self._params()
        if self.cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params.values(), self.cfg.clip_value)
        self._before = {k: p.detach().clone() for k, p in params.items()}
        self._grad = {
            k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for k, p in params.items()
        }

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        for k, p in self._params().items():
            step = -self._grad[k] * (p.detach() - self._before[k])
            self.omega[k] = self.omega[k] + step if k in self.omega else step
        self._before, self._grad = {}, {}

    def after_experience(self, experience: Experience) -> None:
        for k, p in self._params().items():
            theta = p.detach()
            anchor = self.anchor[k].to(theta.device)
            omega = self.omega.get(k, torch.zeros_like(theta))
            new = omega / ((theta - anchor) ** 2 + self.cfg.xi)
            self.big_omega[k] = (
                self.big_omega[k].to(theta.device) + new if k in self.big_omega else new
            )
            self.anchor[k] = theta.clone()
        self.omega = {}

    def plugin_state(self) -> dict:
        return {"omega": self.omega, "big_omega": self.big_omega, "anchor": self.anchor}

    def load_plugin_state(self, state: Mapping) -> None:
        self.omega = dict(state.get("omega", {}))
        self.big_omega = dict(state.get("big_omega", {}))
        self.anchor = dict(state.get("anchor", {}))
