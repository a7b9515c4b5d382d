"""iCaRL (Rebuffi et al., CVPR 2017), as in Mammoth's ``icarl`` (DER paper, Table 2).

* Memory: ``buffer.size // n_seen_classes`` exemplars per seen class, chosen by **herding** at
  each experience end: greedily, the sample that brings the running mean of the chosen
  exemplars' features closest to the class mean (un-augmented images, eval mode). Old classes
  keep their first exemplars in herding order.
* Training data: the experience's samples plus every exemplar (one shuffled union), as in the
  paper; ``replay_exemplars: false`` trains on the experience's samples only, which is what
  Mammoth's 2020 code (the DER paper's Table 2) does: its ``begin_task`` is never called.
* Loss: binary cross-entropy over the heads seen so far (this experience included); the
  targets of the previous experiences' heads are the sigmoid outputs of the network frozen at
  the last experience end (distillation), those of the current heads are one-hot.
* Classifier: **nearest mean of exemplars** in feature space (the pooled backbone output),
  computed on the un-augmented exemplars and cached until the next training step. Before any
  exemplar exists (the random-init evaluation) the head's logits are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyContext
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience, Split
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin
from cl_framework.strategies.teacher import FrozenTeacherMixin


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows chosen by herding: each pick minimises the distance between the
    class mean and the mean of the rows picked so far (a row is picked at most once)."""
    target = features.mean(0, keepdim=True)
    running = torch.zeros_like(target)
    taken = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    picks = []
    for i in range(min(k, len(features))):
        cost = (target - (features + running) / (i + 1)).norm(dim=1)
        cost[taken] = float("inf")
        j = int(cost.argmin())
        picks.append(j)
        taken[j] = True
        running += features[j : j + 1]
    return torch.tensor(picks, dtype=torch.long)


@register_strategy
class ICaRL(FrozenTeacherMixin, RehearsalPlugin):
    name = "icarl"
    fills_buffer = True
    replaces_ce = True
    needs_in_memory_data = True

    @dataclass
    class Config:
        wd_reg: float = 0.0  # L2 penalty on all weights (Mammoth --wd_reg; 0 in its best args)
        # train on the exemplars with the new data (the paper's Algorithm 3; later Mammoth);
        # false = exemplars only classify, as in Mammoth's 2020 code (its begin_task, which adds
        # them, is never called), i.e. the setting of the DER paper's iCaRL rows
        replay_exemplars: bool = True
        feature_batch_size: int = 256  # rows per forward when herding and computing class means

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        # frozen copy from the second experience on; travels through plugin_state()
        object.__setattr__(self, "teacher", None)
        self._means: torch.Tensor | None = None  # (n_heads, d) class means, NaN rows = none

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        if ctx.scenario.setting == "domain-il":
            raise ConfigError(
                "strategy",
                "icarl is class-IL / task-IL only (as in Mammoth)",
                "use a class-incremental scenario",
            )
        n_heads = ctx.heads.n_heads
        self.register_buffer("old_heads", torch.zeros(n_heads, dtype=torch.bool))
        self.register_buffer("seen_heads", torch.zeros(n_heads, dtype=torch.bool))

    def _heads_up_to(self, index: int) -> torch.Tensor:
        mask = torch.zeros(self.ctx.heads.n_heads, dtype=torch.bool)
        if index >= 0:
            mask[self.ctx.heads.heads_of(self.ctx.scenario.classes_up_to(index))] = True
        return mask.to(self.module.device)

    def before_experience(self, experience: Experience) -> None:
        self.seen_heads = self._heads_up_to(experience.index)
        self.old_heads = self._heads_up_to(experience.index - 1)

    def train_data(self, experience: Experience, split: Split) -> Split:
        if self.buffer.is_empty or not self.cfg.replay_exemplars:
            return split
        memory = self.buffer.all(["x", "y"])
        return split.with_foreign_rows(memory["x"].cpu(), memory["y"].cpu())

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        seen = self.seen_heads.to(out.logits.device)
        targets = F.one_hot(batch.y, out.logits.shape[1]).to(out.logits.dtype)
        if self.teacher is not None:
            old = self.old_heads.to(out.logits.device)
            with torch.no_grad():
                soft = torch.sigmoid(self.teacher(batch.x))
            targets[:, old] = soft[:, old]
        terms = {
            "icarl_bce": F.binary_cross_entropy_with_logits(out.logits[:, seen], targets[:, seen])
        }
        if self.cfg.wd_reg > 0:
            params = self.module.trainable_parameters()
            terms["icarl_l2"] = self.cfg.wd_reg * sum((p**2).sum() for p in params)
        return terms

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        self._means = None  # the features moved

    # ------------------------------------------------------------ memory and classifier
    @torch.no_grad()
    def _features(self, x_raw: torch.Tensor) -> torch.Tensor:
        module = self.module
        was_training = module.training
        module.eval()
        try:
            parts = [
                module.backbone(
                    module.transform.to_float(
                        x_raw[s : s + self.cfg.feature_batch_size].to(module.device)
                    )
                )
                for s in range(0, len(x_raw), self.cfg.feature_batch_size)
            ]
        finally:
            module.train(was_training)
        return torch.cat(parts)

    def after_experience(self, experience: Experience) -> None:
        module = self.module
        buffer = self.buffer
        seen_classes = self.ctx.scenario.classes_up_to(experience.index)
        per_class = buffer.capacity // len(seen_classes)
        kept_x, kept_y = [], []
        if not buffer.is_empty:
            memory = buffer.all(["x", "y"])
            for head in memory["y"].unique().tolist():
                rows = (memory["y"] == head).nonzero()[:, 0][:per_class]
                kept_x.append(memory["x"][rows])
                kept_y.append(memory["y"][rows])
        split = experience.train
        own = torch.arange(len(split)) if split.head is None else (split.head < 0).nonzero()[:, 0]
        x_own, y_own = split.x[own], split.y[own]
        for label in sorted(set(y_own.tolist())):
            x_class = x_own[y_own == label]
            picks = herding_order(self._features(x_class), per_class)
            kept_x.append(x_class[picks].to(buffer.device))
            head = module.heads.map(torch.tensor([label], device=module.device))
            kept_y.append(head.to(buffer.device).expand(len(picks)))
        x_all, y_all = torch.cat(kept_x), torch.cat(kept_y)
        t_all = torch.full_like(y_all, 0)  # task labels are not used by iCaRL's memory
        buffer.replace_contents(x=x_all, y=y_all, t=t_all)
        self.freeze_teacher()
        self._means = None

    def class_means(self) -> torch.Tensor:
        """(n_heads, d) mean exemplar feature per head (NaN rows for heads with none)."""
        if self._means is None:
            memory = self.buffer.all(["x", "y"])
            feats = self._features(memory["x"])
            heads = memory["y"].to(feats.device)
            means = torch.full(
                (self.ctx.heads.n_heads, feats.shape[1]), float("nan"), device=feats.device
            )
            for head in heads.unique().tolist():
                means[head] = feats[heads == head].mean(0)
            self._means = means
        return self._means

    def eval_logits(self, out: ForwardOutput, logits: torch.Tensor) -> torch.Tensor:
        if self.buffer.is_empty:
            return logits
        means = self.class_means()
        dist = torch.cdist(out.features.float(), means.nan_to_num(0.0)).pow(2)
        scores = -dist
        return scores.masked_fill(means.isnan().any(1).unsqueeze(0), torch.finfo(scores.dtype).min)
