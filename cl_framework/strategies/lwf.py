"""Learning without Forgetting (Li & Hoiem, 2016), class-IL form as in Mammoth's ``lwf``.

At the start of every experience after the first: the new heads are warmed up on frozen
features (classifier only, ``warmup_epochs``), then a frozen copy of the network becomes the
teacher. Each step: cross-entropy over the heads seen so far, plus
``alpha * CE(sharpen(p_old, T), sharpen(p_new, T))`` over the previous experiences' heads,
where ``sharpen(p, T) = p**(1/T) / sum(p**(1/T))`` of softmax outputs (Mammoth's "smooth" and
"modified_kl_div"), plus ``wd_reg * ||theta||^2``. The teacher sees the un-augmented input,
like Mammoth's logits recorded on the non-augmented images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyContext, StrategyPlugin
from cl_framework.scenarios import Experience
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.teacher import FrozenTeacherMixin


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


@register_strategy
class LwF(FrozenTeacherMixin, StrategyPlugin):
    name = "lwf"

    @dataclass
    class Config:
        alpha: float = 1.0
        temperature: float = 2.0
        wd_reg: float = 0.0
        warmup_epochs: int = 1
        warmup_lr: float | None = None

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        # The frozen teacher is deliberately not a registered sub-module: it exists only from
        # the second experience on, so it travels through plugin_state() instead.
        object.__setattr__(self, "teacher", None)

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        n_heads = ctx.heads.n_heads
        self.register_buffer("old_heads", torch.zeros(n_heads, dtype=torch.bool))
        self.register_buffer("seen_heads", torch.zeros(n_heads, dtype=torch.bool))

    def before_experience(self, experience: Experience) -> None:
        module = self.module
        heads = module.heads
        seen = torch.zeros(heads.n_heads, dtype=torch.bool)
        seen[heads.heads_of(self.ctx.scenario.classes_up_to(experience.index))] = True
        old = torch.zeros_like(seen)
        if experience.index > 0:
            old[heads.heads_of(self.ctx.scenario.classes_up_to(experience.index - 1))] = True
        self.old_heads = old.to(module.device)
        self.seen_heads = seen.to(module.device)
        if experience.index == 0:
            return
        self._warm_up(experience)
        self.freeze_teacher()

    def _warm_up(self, experience: Experience) -> None:
        """Train only the classifier on frozen features for the new experience's heads."""
        module = self.module
        device = module.device
        new_heads = module.heads.heads_of(experience.classes).to(device)
        lr = self.cfg.warmup_lr or module.optimizer_config.lr
        opt = torch.optim.SGD(module.head.parameters(), lr=lr)
        runner = self.ctx.runner
        was_training = module.training
        module.eval()
        for epoch in range(self.cfg.warmup_epochs):
            loader = runner.loader(
                experience.train, experience.task_label, experience.index, epoch, stream=2
            )
            for batch in loader.batches():
                x = module.transform.train(batch["x"].to(device))
                y = module.heads.map(batch["y"].to(device))
                with torch.no_grad():
                    feats = module.backbone(x)
                logits = module.head(feats)[:, new_heads]
                target = (y.unsqueeze(1) == new_heads.unsqueeze(0)).float().argmax(1)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(logits, target).backward()
                opt.step()
        module.train(was_training)

    def logit_mask(self, batch: Batch) -> torch.Tensor | None:
        return self.seen_heads.to(batch.y.device)

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.teacher is not None and bool(self.old_heads.any()):
            n = batch.n_stream
            with torch.no_grad():
                old = self.teacher(self.module.transform.to_float(batch.x_raw))
            mask = self.old_heads.to(old.device)
            p_old = sharpen(F.softmax(old[:, mask], dim=1), self.cfg.temperature)
            p_new = sharpen(F.softmax(out.logits[:n, mask], dim=1), self.cfg.temperature)
            kd = -(p_old * torch.log(p_new)).sum(dim=1).mean()
            terms["lwf_kd"] = self.cfg.alpha * kd
        if self.cfg.wd_reg > 0:
            params = self.module.trainable_parameters()
            terms["lwf_l2"] = self.cfg.wd_reg * sum((p**2).sum() for p in params)
        return terms
