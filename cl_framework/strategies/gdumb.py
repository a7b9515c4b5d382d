"""GDumb (Prabhu, Torr & Dokania, ECCV 2020): a greedy class-balanced memory and a learner
trained from scratch on that memory only.

* Sampler: the stream never trains the network (``trains_on_stream = False``); its rows only
  enter the shared buffer. The paper's sampler keeps every class at ``size / n_seen_classes``
  samples, evicting a random sample of the largest class; the buffer's ``class_balanced``
  policy keeps the same per-class counts with a uniformly random subset of each class, which
  on a shuffled stream is the same distribution (the experiment configs set it). With the
  ``reservoir`` policy the memory is a uniform sample of the stream, as in Mammoth's
  ``gdumb``.
* Learner: at each experience end the backbone and head are reset to the run's initial
  weights and trained for ``epochs`` on the buffer alone: SGD (``max_lr``, momentum, weight
  decay), the first epoch at ``max_lr / 10``, then cosine annealing with warm restarts
  (``T_0 = 1``, ``T_mult = 2``, down to ``min_lr``), CutMix (probability ``cutmix_prob``,
  ``Beta(cutmix_alpha, cutmix_alpha)``; torchvision's ``v2.CutMix``) and gradient-norm
  clipping, as in the paper and in Mammoth's ``fit_buffer``.
* ``fit_every_experience: true`` (default) fits before every evaluation, so the accuracy
  matrix is GDumb's at every point of the stream (the paper trains whenever it is queried);
  ``false`` fits only after the last experience, as Mammoth does (the earlier rows of the
  matrix then show the untrained network).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cl_framework.engine.plugin import ROLE_REPLAY, StrategyContext
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin

log = logging.getLogger(__name__)

#: Mixed with the run seed and the experience index for the fit's shuffling and CutMix draws.
_FIT_SALT = 9_241


@register_strategy
class GDumb(RehearsalPlugin):
    name = "gdumb"
    trains_on_stream = False

    @dataclass
    class Config:
        epochs: int = 256  # passes over the memory per fit (paper and Mammoth: 256)
        batch_size: int = 16  # memory rows per step of the fit (paper: 16)
        max_lr: float = 0.05
        min_lr: float = 0.0005
        momentum: float = 0.9  # paper; Mammoth's default is 0
        weight_decay: float = 1.0e-6
        clip_grad_norm: float = 10.0  # paper; 0 = no clipping (Mammoth)
        cutmix_alpha: float = 1.0  # 0 = no CutMix
        cutmix_prob: float = 0.5
        fit_every_experience: bool = True  # false = only after the last experience (Mammoth)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        for key in ("epochs", "batch_size"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"strategy.gdumb.{key}", "must be >= 1", f"set {key}: 16")
        if not 0 < cfg.min_lr <= cfg.max_lr:
            raise ConfigError(
                "strategy.gdumb.min_lr", "needs 0 < min_lr <= max_lr", "set min_lr: 0.0005"
            )
        if not 0 <= cfg.cutmix_prob <= 1 or cfg.cutmix_alpha < 0:
            raise ConfigError(
                "strategy.gdumb.cutmix_prob",
                "cutmix_prob must be in [0, 1] and cutmix_alpha >= 0",
                "set cutmix_alpha: 1.0, cutmix_prob: 0.5",
            )
        self._initial: dict[str, Any] | None = None

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        if ctx.buffer is not None:
            log.info("gdumb: memory sampler = buffer policy '%s'", ctx.buffer.policy)
        if self._initial is None:
            self._initial = {
                "backbone": _cpu_copy(ctx.module.backbone.state_dict()),
                "head": _cpu_copy(ctx.module.head.state_dict()),
            }

    def after_experience(self, experience: Experience) -> None:
        last = experience.index == self.ctx.scenario.n_experiences - 1
        if self.cfg.fit_every_experience or last:
            with self.timed("fit"):
                self.fit(seed=(self.run_seed * 1_000_003 + experience.index) * 31 + _FIT_SALT)

    def reset_network(self) -> None:
        """Backbone and head back to the run's initial weights (GDumb learns from scratch)."""
        assert self._initial is not None
        self.module.backbone.load_state_dict(self._initial["backbone"])
        self.module.head.load_state_dict(self._initial["head"])

    def fit(self, seed: int) -> None:
        """Train the reset network on the buffer alone (the schedule in the module docstring)."""
        cfg, module = self.cfg, self.module
        self.reset_network()
        if self.buffer.is_empty:
            return
        memory = self.buffer.all(["x", "y"])
        params = module.trainable_parameters()
        opt = torch.optim.SGD(
            params, lr=cfg.max_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=1, T_mult=2, eta_min=cfg.min_lr
        )
        cutmix = (
            v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=module.head.out_features)
            if cfg.cutmix_alpha > 0 and cfg.cutmix_prob > 0
            else None
        )
        was_training = module.training
        module.train()
        n, device = len(memory["y"]), module.device
        # v2.CutMix draws from torch's global generator: fork it, seeded from the run
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for epoch in range(cfg.epochs):
                if epoch == 0:  # one warm-up epoch at a tenth of the rate
                    _set_lr(opt, cfg.max_lr * 0.1)
                elif epoch == 1:
                    _set_lr(opt, cfg.max_lr)
                else:
                    schedule.step()
                for rows in torch.randperm(n).split(cfg.batch_size):
                    x = module.transform.train(memory["x"][rows].to(device))
                    y = memory["y"][rows].to(device)
                    target: torch.Tensor = y
                    if cutmix is not None and float(torch.rand(())) < cfg.cutmix_prob:
                        x, target = cutmix(x, y)
                    loss = F.cross_entropy(module.run_forward(x, ROLE_REPLAY).logits, target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
                    opt.step()
        module.train(was_training)

    def plugin_state(self) -> dict[str, Any]:
        return {"initial": self._initial}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        self._initial = state.get("initial")


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
