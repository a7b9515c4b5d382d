"""Online EWC (Schwarz et al., 2018) as in Mammoth's ``ewc_on``.

After each experience the diagonal Fisher is estimated from per-sample gradients of
``log p(y|x)`` weighted by ``p(y|x)`` over the experience's training data, and accumulated as
``F <- gamma * F + F_new``; the penalty is ``e_lambda * sum(F * (theta - theta*)**2)``.
Per-sample gradients are computed with ``torch.func`` (vmap over grad) instead of Mammoth's
sample-by-sample loop; the network is put in eval mode for it (BatchNorm statistics are not
updated by the Fisher pass; Mammoth leaves the net in train mode, which only differs for
BatchNorm backbones).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyPlugin
from cl_framework.scenarios import Experience
from cl_framework.strategies.registry import register_strategy


@register_strategy
class OnlineEWC(StrategyPlugin):
    name = "ewc_on"

    @dataclass
    class Config:
        e_lambda: float = 90.0
        gamma: float = 1.0
        fisher_batch_size: int = 256

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def _net(self) -> nn.Module:
        return nn.Sequential(self.module.backbone, self.module.head)

    def after_experience(self, experience: Experience) -> None:
        module = self.module
        device = module.device
        net = self._net()
        params = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
        buffers = {k: v.detach() for k, v in net.named_buffers()}

        def log_prob(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
            logits = functional_call(net, (p, buffers), (x.unsqueeze(0),))
            return F.log_softmax(logits, dim=1).gather(1, y.view(1, 1)).squeeze()

        per_sample = vmap(grad(log_prob, has_aux=False), in_dims=(None, 0, 0))
        fisher = {k: torch.zeros_like(v) for k, v in params.items()}
        was_training = module.training
        module.eval()
        split = experience.train
        for start in range(0, len(split.y), self.cfg.fisher_batch_size):
            x = module.transform.train(
                split.x[start : start + self.cfg.fisher_batch_size].to(device)
            )
            y = module.heads.map(split.y[start : start + self.cfg.fisher_batch_size].to(device))
            with torch.no_grad():
                logits = net(x)
                prob = F.softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
            grads = per_sample(params, x, y)
            for k, g in grads.items():
                weight = prob.view(-1, *([1] * (g.dim() - 1)))
                fisher[k] += (weight * g**2).sum(0)
        module.train(was_training)
        n = max(len(split.y), 1)
        for k in fisher:
            fisher[k] /= n
            if k in self.fisher:
                fisher[k] += self.cfg.gamma * self.fisher[k]
        self.fisher = fisher
        self.anchor = {k: v.clone() for k, v in params.items()}

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        if not self.fisher:
            return {}
        penalty = out.logits.new_zeros(())
        if next(iter(self.fisher.values())).device != out.logits.device:  # after a resume
            device = out.logits.device
            self.fisher = {k: v.to(device) for k, v in self.fisher.items()}
            self.anchor = {k: v.to(device) for k, v in self.anchor.items()}
        for k, p in self._net().named_parameters():
            if k in self.fisher:
                penalty = penalty + (self.fisher[k] * (p - self.anchor[k]) ** 2).sum()
        return {"ewc_penalty": self.cfg.e_lambda * penalty}

    def plugin_state(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_plugin_state(self, state: Mapping) -> None:
        self.fisher = dict(state.get("fisher", {}))
        self.anchor = dict(state.get("anchor", {}))
