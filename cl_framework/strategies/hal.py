"""Hindsight Anchor Learning (HAL; Chaudhry et al., AAAI 2021), as in Mammoth's ``hal`` (the
code behind the DER paper's Table 2).

* Step: ER's cross-entropy step on the stream rows plus a replay draw (``theta_t -> theta'``).
  If anchors exist, their outputs ``f_theta'(e)`` are kept, the weights go back to
  ``theta_t`` and one step is taken on the task gradient plus the gradient of
  ``hal_lambda * mean (f_theta'(e) - f_theta(e))^2`` (:meth:`CLModule.extra_step` with
  ``accumulate``): the update the anchors would not have changed much after the batch.
* ``phi``: a running mean of the stream rows' features, ``phi <- beta phi + (1 - beta) mean``
  after each step, reset at each experience start.
* Anchors, at each experience end, one per class of that experience: a copy of the network is
  fine-tuned for one step on a buffer draw (``theta_m``); starting from uniform noise, the
  anchor ``e`` takes ``anchor_steps`` SGD steps (the optimizer's learning rate) on
  ``-CE(f_theta_m(e), c) + CE(f_theta(e), c) + gamma ||phi_theta(e) - phi||^2``: an input the
  fine-tuning forgets most, close to the experience's mean feature.

Memory: the shared reservoir buffer. Mammoth's code declares a per-experience ring buffer, but
its ``add_data`` always places rows by reservoir sampling and the per-experience reset never
fires, so the published rows come from a reservoir; ours uses one too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.engine.plugin import ROLE_STREAM, Batch, ForwardOutput
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience
from cl_framework.strategies.er import ER
from cl_framework.strategies.mer import flat_params, reptile_update
from cl_framework.strategies.registry import register_strategy

#: Mixed with the run seed and the experience index for the anchors' initial noise.
_ANCHOR_SALT = 8_363


@register_strategy
class HAL(ER):
    name = "hal"

    @dataclass
    class Config:
        minibatch_size: int = 128  # replay rows joined with the stream rows per step
        hal_lambda: float = 0.1  # weight of the anchor term
        beta: float = 0.5  # decay of the running feature mean phi
        gamma: float = 0.1  # weight of the anchors' feature-distance term
        anchor_steps: int = 100  # SGD steps per anchor (fixed at 100 in Mammoth)
        finetune_batch_size: int = 128  # buffer rows of theta_m's step (Mammoth: batch_size)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        for key in ("minibatch_size", "anchor_steps", "finetune_batch_size"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"strategy.hal.{key}", "must be >= 1", f"set {key}: 100")
        if not 0 <= cfg.beta <= 1:
            raise ConfigError("strategy.hal.beta", "must be in [0, 1]", "set beta: 0.5")
        self.anchors: torch.Tensor | None = None  # (n_anchors, *input shape)
        self.phi: torch.Tensor | None = None
        self._before: torch.Tensor | None = None

    # ------------------------------------------------------------------ training
    def before_experience(self, experience: Experience) -> None:
        self.phi = None  # Mammoth deletes phi at each experience end; zeros at the next step

    def prepare_batch(self, batch: Batch) -> Batch:
        if self.anchors is not None:
            self._before = flat_params(self.module.trainable_parameters())
        return super().prepare_batch(batch)

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        module = self.module
        if self.anchors is not None and self._before is not None:
            anchors = self.anchors.to(module.device)
            with torch.no_grad():
                moved = module.run_forward(anchors, ROLE_STREAM).logits
            reptile_update(module.trainable_parameters(), self._before, 0.0)  # back to theta_t
            drift = moved - module.run_forward(anchors, ROLE_STREAM).logits
            module.extra_step(self.cfg.hal_lambda * drift.pow(2).mean(), accumulate=True)
            self._before = None
        with torch.no_grad():
            mean = module.run_forward(batch.x[: batch.n_stream], ROLE_STREAM).features.mean(0)
        phi = torch.zeros_like(mean) if self.phi is None else self.phi
        self.phi = self.cfg.beta * phi + (1 - self.cfg.beta) * mean

    # ------------------------------------------------------------------ anchors
    def _network_copy(self) -> nn.Module:
        module = self.module
        return nn.Sequential(copy.deepcopy(module.backbone), copy.deepcopy(module.head))

    def after_experience(self, experience: Experience) -> None:
        module = self.module
        if self.buffer.is_empty:
            return
        lr = float(module.optimizer_config.lr)
        current = self._network_copy()
        finetuned = self._network_copy()
        draw = self.draw(self.cfg.finetune_batch_size, ("x", "y"))
        assert draw is not None
        opt = torch.optim.SGD(finetuned.parameters(), lr=lr)
        with torch.enable_grad():
            F.cross_entropy(finetuned(draw["x"]), draw["y"]).backward()
        opt.step()
        for p in (*current.parameters(), *finetuned.parameters()):
            p.requires_grad_(False)
        phi = self.phi if self.phi is not None else torch.zeros(module.head.in_features)
        phi = phi.to(module.device)
        shape = tuple(draw["x"].shape[1:])
        generator = torch.Generator().manual_seed(
            (self.run_seed * 1_000_003 + experience.index) * 31 + _ANCHOR_SALT
        )
        heads = module.heads.heads_of(experience.classes).tolist()
        new = []
        with torch.enable_grad():
            for head in heads:
                e = torch.rand((1, *shape), generator=generator).to(module.device)
                e.requires_grad_(True)
                e_opt = torch.optim.SGD([e], lr=lr)
                target = torch.tensor([head], device=module.device)
                for _ in range(self.cfg.anchor_steps):
                    e_opt.zero_grad()
                    loss = (
                        -F.cross_entropy(finetuned(e), target)
                        + F.cross_entropy(current(e), target)
                        + self.cfg.gamma * (current[0](e) - phi).pow(2).sum()
                    )
                    loss.backward()
                    e_opt.step()
                new.append(e.detach())
        anchors = torch.cat(new)
        self.anchors = anchors if self.anchors is None else torch.cat([self.anchors, anchors])

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        return {"anchors": self.anchors, "phi": self.phi}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        self.anchors, self.phi = state.get("anchors"), state.get("phi")
