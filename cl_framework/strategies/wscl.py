"""WSCL, Wake-Sleep Consolidated Learning (Sorrenti et al., IEEE TNNLS 2024; perceivelab/wscl).

Compose with a rehearsal base: ``strategy=[er_ace, wscl]`` (or ``er``, ``derpp``). Phases:

* **Wake, dynamic freezing** [code-faithful]: at the start of every experience after the first,
  candidate copies of the model (``CLModule.clone``) freeze the stem plus the first ``0..n``
  still-trainable residual blocks (layer1.0 .. layer3.1; layer4 and the head are never frozen),
  each trains one epoch on the same batches with its own buffer copy, each is scored on a
  held-out slice of the current experience (``val_size``) and on the previous experience's
  held-out "freezing buffer" (``freeze_buffer_size``); the lowest mean cross-entropy wins, its
  weights, buffer and freezing are adopted. Freezing accumulates.
* **REM, dreaming** [code-faithful]: free heads are bound to classes of a disjoint labelled
  dataset (the auxiliary-stream mechanism, :class:`AuxiliaryStream`, which this plug-in extends)
  and trained jointly with the real data (``dream_stage: joint``); or, our reading of the paper,
  in a separate REM stage after wake (``dream_stage: separate``). Incoming classes take the
  most-activated free heads.
* **NREM** [our reading of the paper; the released code has none]: a short-term memory (STM)
  holds the current experience's episodic samples, the shared buffer is the long-term memory
  (LTM); after wake, ``nrem_epochs`` replay STM + LTM with the replay cross-entropy, with a
  synaptic-plasticity step (strengthen the most important weights, weaken the least important,
  by an importance score from :data:`IMPORTANCE`), then STM is consolidated into LTM.

See ``docs/wscl.md`` for every key and what is code-faithful.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.engine.module import CLModule
from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyContext, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience, Split
from cl_framework.scenarios.loader import epoch_seed
from cl_framework.strategies.auxiliary import AuxiliaryStream
from cl_framework.strategies.registry import register_strategy

log = logging.getLogger(__name__)

#: The freezable residual blocks, in forward order (the reference code's units).
FREEZABLE_BLOCKS: tuple[str, ...] = (
    "layer1.0",
    "layer1.1",
    "layer2.0",
    "layer2.1",
    "layer3.0",
    "layer3.1",
)
#: Shuffle stream of the candidates' trial epoch (same batches for every candidate).
CANDIDATE_STREAM = 2_000
#: Shuffle streams of the sleep stages.
NREM_STREAM, REM_STREAM = 2_100, 2_200
DREAM_STAGES = ("joint", "separate")


# ---------------------------------------------------------------------------- freezing
def frozen_units(depth: int) -> list[str]:
    """Names of the units frozen at ``depth``: nothing at 0, else the stem + the first blocks."""
    if not 0 <= depth <= len(FREEZABLE_BLOCKS):
        raise ValueError(f"freezing depth must be in 0..{len(FREEZABLE_BLOCKS)}, got {depth}")
    return ["stem", *FREEZABLE_BLOCKS[:depth]] if depth > 0 else []


def unit_modules(backbone: nn.Module, depth: int) -> list[nn.Module]:
    """The modules of :func:`frozen_units` in a CIFAR-style ResNet (stem = conv1 + bn1)."""
    mods: list[nn.Module] = []
    for name in frozen_units(depth):
        if name == "stem":
            mods += [backbone.get_submodule("conv1"), backbone.get_submodule("bn1")]
        else:
            mods.append(backbone.get_submodule(name))
    return mods


def apply_freezing(backbone: nn.Module, depth: int) -> None:
    """``requires_grad_(False)`` on the stem and the first ``depth`` blocks (depth 0: nothing)."""
    for mod in unit_modules(backbone, depth):
        mod.requires_grad_(False)


def candidate_depths(current: int, max_candidates: int | None = None) -> list[int]:
    """Depths of the candidates: the current depth (candidate 0) and each deeper one.

    Candidate ``i`` freezes ``i`` more still-trainable blocks than are frozen already.
    """
    depths = list(range(current, len(FREEZABLE_BLOCKS) + 1))
    return depths if max_candidates is None else depths[: max(1, max_candidates)]


def select_candidate(losses: Sequence[float]) -> int:
    """Index of the lowest combined loss (the first one on ties)."""
    if not losses:
        raise ValueError("no candidate to select")
    return min(range(len(losses)), key=lambda i: (losses[i], i))


def holdout(
    split: Split, classes: Sequence[int], n_first: int, n_second: int
) -> tuple[Split, Split, Split]:
    """``(rest, first, second)``: per class, the first ``n_first // C`` training rows, the next
    ``n_second // C`` rows, and what remains (the reference code's ``--validation`` split)."""
    per_first = n_first // max(len(classes), 1)
    per_second = n_second // max(len(classes), 1)
    first, second, rest = [], [], []
    for c in classes:
        rows = (split.y == int(c)).nonzero().squeeze(1)
        first.append(rows[:per_first])
        second.append(rows[per_first : per_first + per_second])
        rest.append(rows[per_first + per_second :])

    def take(parts: list[torch.Tensor]) -> Split:
        idx = torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.long)
        t = split.t[idx] if split.t is not None else None
        return Split(x=split.x[idx], y=split.y[idx], t=t)

    return take(rest), take(first), take(second)


# ------------------------------------------------------------------- synaptic plasticity
def abs_w_grad(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """|w * dL/dw| (first-order estimate of the loss change if the weight were removed)."""
    return (param * grad).abs()


def grad_sq(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(dL/dw)^2 (empirical-Fisher diagonal)."""
    return grad.pow(2)


#: Importance scores, accumulated over the NREM steps (``strategy.wscl.importance``).
IMPORTANCE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "abs_w_grad": abs_w_grad,
    "grad_sq": grad_sq,
}


@torch.no_grad()
def plasticity_step(
    params: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], fraction: float, strength: float
) -> int:
    """Scale the top ``fraction`` of each tensor's weights by importance by ``1 + strength``
    (strengthen) and the bottom ``fraction`` by ``1 - strength`` (weaken); the rest unchanged.

    Per tensor, ``k = floor(fraction * numel)`` entries each way (ties broken by ``topk``).
    Returns how many weights changed.
    """
    changed = 0
    for p, s in zip(params, scores, strict=True):
        k = int(fraction * p.numel())
        k = min(k, p.numel() // 2)
        if k == 0:
            continue
        flat_s = s.reshape(-1)  # logical (NCHW) order, whatever the memory format
        top = flat_s.topk(k).indices
        bottom = (-flat_s).topk(k).indices
        factor = torch.ones_like(flat_s)
        factor[top] = 1.0 + strength
        factor[bottom] = 1.0 - strength
        p.mul_(factor.reshape(p.shape))  # elementwise by logical index: NHWC weights too
        changed += 2 * k
    return changed


class _Shared(list):
    """A list that ``copy.deepcopy`` shares instead of copying (dream sources in candidates)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


SCORE_MODES = ("eval", "train")
ADOPT = ("all", "weights")


def _loss_on(module: CLModule, split: Split, batch_size: int = 500) -> float:
    """Mean cross-entropy (over every head) of ``module`` in eval mode on a labelled split."""
    if len(split) == 0:
        return float("nan")
    was_training = module.training
    module.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(split), batch_size):
                x = split.x[start : start + batch_size].to(module.device)
                y = module.heads.map(split.y[start : start + batch_size].to(module.device))
                logits = module.predict_logits(x)
                total += float(F.cross_entropy(logits, y, reduction="sum"))
    finally:
        module.train(was_training)
    return total / len(split)


def _train_mode_loss_on(module: CLModule, split: Split, batch_size: int) -> float:
    """The reference code's score: mean over batches of the batch-mean cross-entropy, with
    the model in **train mode** (batch statistics; BatchNorm running statistics are updated by
    this pass and kept, as in the reference, where the scoring forward is a training forward)."""
    if len(split) == 0:
        return float("nan")
    was_training = module.training
    module.train()
    losses = []
    try:
        with torch.no_grad():
            for start in range(0, len(split), batch_size):
                x = split.x[start : start + batch_size].to(module.device)
                y = module.heads.map(split.y[start : start + batch_size].to(module.device))
                logits = module.run_forward(module.transform.to_float(x), "eval").logits
                losses.append(float(F.cross_entropy(logits, y)))
    finally:
        module.train(was_training)
    return sum(losses) / len(losses)


@register_strategy
class WSCL(AuxiliaryStream):
    name = "wscl"
    uses_buffer = True

    @dataclass
    class Config(AuxiliaryStream.Config):
        # wake: dynamic freezing
        freezing: bool = True
        val_size: int = 1000
        freeze_buffer_size: int = 200
        max_candidates: int | None = None
        trial_epoch_counts: bool = True
        freeze_bn_stats: bool = False
        score_mode: str = "eval"
        score_decimals: int | None = None
        adopt: str = "all"
        # REM: dreaming (the auxiliary keys: dataset, options, next_heads, aux_ratio, ...)
        dream: bool = True
        dream_stage: str = "joint"
        rem_epochs: int = 1
        rem_lr: float | None = None
        rem_free_heads_only: bool = True
        rem_samples: int | None = None
        # NREM (paper reading)
        nrem: bool = False
        stm_size: int = 500
        nrem_epochs: int = 1
        nrem_lr: float | None = None
        sleep_batch_size: int | None = None
        importance: str = "abs_w_grad"
        plasticity_fraction: float = 0.0
        plasticity_strength: float = 0.0

    def __init__(self, cfg: Config) -> None:
        self._check(cfg)
        if cfg.dream:
            super().__init__(cfg)
        else:
            StrategyPlugin.__init__(self, cfg)
            self.datasets, self.sources, self._pool = [], [], None
            self._n_real = {}
        self.frozen_depth = 0
        self.freeze_x: torch.Tensor | None = None
        self.freeze_y: torch.Tensor | None = None
        self._val: Split | None = None
        self._train: Split | None = None
        self.stm: dict[str, torch.Tensor] = {}
        self.stm_seen = 0
        self._ltm_snapshot: dict[str, Any] | None = None
        self.last_selection: dict[str, Any] = {}

    @staticmethod
    def _check(cfg: Config) -> None:
        key = "strategy.wscl"
        if cfg.dream_stage not in DREAM_STAGES:
            raise ConfigError(
                f"{key}.dream_stage", f"unknown '{cfg.dream_stage}'", "joint|separate"
            )
        if cfg.score_mode not in SCORE_MODES:
            raise ConfigError(f"{key}.score_mode", f"unknown '{cfg.score_mode}'", "eval|train")
        if cfg.adopt not in ADOPT:
            raise ConfigError(f"{key}.adopt", f"unknown '{cfg.adopt}'", "all|weights")
        if cfg.score_decimals is not None and cfg.score_decimals < 0:
            raise ConfigError(f"{key}.score_decimals", "must be >= 0 or null")
        if cfg.importance not in IMPORTANCE:
            raise ConfigError(f"{key}.importance", f"unknown '{cfg.importance}'", str(IMPORTANCE))
        for name in ("val_size", "freeze_buffer_size", "stm_size", "nrem_epochs", "rem_epochs"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"{key}.{name}", "must be >= 0")
        if not 0.0 <= cfg.plasticity_fraction <= 0.5:
            raise ConfigError(f"{key}.plasticity_fraction", "must be in [0, 0.5]")
        if not 0.0 <= cfg.plasticity_strength < 1.0:
            raise ConfigError(f"{key}.plasticity_strength", "must be in [0, 1)")
        if cfg.dream and cfg.dataset is None:
            raise ConfigError(
                f"{key}.dataset",
                "is required when dream=true (the dreaming dataset)",
                "e.g. strategy.wscl.dataset=mnist, or strategy.wscl.dream=false",
            )

    def extra_heads(self) -> int:
        return self.cfg.add_aux_classes if self.cfg.dream else 0

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: StrategyContext) -> None:
        if self.cfg.dream:
            super().setup(ctx)
            self.sources = _Shared(self.sources)
        else:
            StrategyPlugin.setup(self, ctx)
        if self.cfg.freezing:
            backbone = ctx.module.backbone
            try:
                unit_modules(backbone, len(FREEZABLE_BLOCKS))
            except AttributeError as exc:
                raise ConfigError(
                    "strategy.wscl.freezing",
                    f"the backbone has no stem conv1/bn1 + layer1..layer3 blocks ({exc})",
                    "use backbone=resnet18 or reduced_resnet18, or strategy.wscl.freezing=false",
                ) from None

    def assign_heads(self, experience: Experience) -> None:
        if self.cfg.dream:
            super().assign_heads(experience)

    @property
    def _wscl_runner(self) -> Any:
        runner = self.ctx.runner
        if runner is None:
            raise RuntimeError("wscl needs the runner (candidate training, sleep stages)")
        return runner

    # ------------------------------------------------------------------- wake
    def before_experience(self, experience: Experience) -> None:
        if self.cfg.nrem:
            self.stm, self.stm_seen = {}, 0
            self._ltm_snapshot = self.buffer.state_dict()
        if not self.cfg.freezing:
            return
        classes = list(experience.classes)
        first = self.cfg.freeze_buffer_size if experience.index > 0 else self.cfg.val_size
        second = self.cfg.val_size if experience.index > 0 else 0
        rest, a, b = holdout(experience.train, classes, first, second)
        if experience.index == 0:  # the freezing buffer is the first rows of the val slice
            val = a
            freeze = holdout(a, classes, self.cfg.freeze_buffer_size, 0)[1]
        else:
            freeze, val = a, b
        self._train, self._val = rest, val
        self._n_real[experience.index] = len(rest)
        if experience.index > 0:
            self._select_freezing(experience)
        self.freeze_x, self.freeze_y = freeze.x.clone(), freeze.y.clone()

    def train_data(self, experience: Experience, split: Split) -> Split:
        if self.cfg.freezing and self._train is not None and split is experience.train:
            split = self._train  # the held-out slices leave the training data
        self._n_real[experience.index] = split.n_own
        return self._with_dreams(split)

    def _with_dreams(self, split: Split) -> Split:
        """``split`` plus the dream rows when they train jointly as one union (reference)."""
        joint = self.cfg.dream and self.cfg.dream_stage == "joint"
        return self.union(split) if joint and self.cfg.mixing == "union" else split

    def score(self, candidate: CLModule) -> float:
        """Mean of the CE on the current held-out slice and on the previous freezing buffer.

        ``score_mode: eval`` (default): exact means in eval mode. ``train`` with
        ``score_decimals: 2``: the reference code (train-mode batch means, the freezing buffer
        scored first, the slice's mean and the combined mean rounded to 2 decimals).
        """
        freeze = None
        if self.freeze_x is not None and len(self.freeze_x):
            freeze = Split(x=self.freeze_x, y=self.freeze_y)
        val = self._val if self._val is not None and len(self._val) else None
        decimals = self.cfg.score_decimals
        losses = []
        if self.cfg.score_mode == "train":
            bs = self._wscl_runner.trainer_cfg.batch_size
            if freeze is not None:
                losses.append(_train_mode_loss_on(candidate, freeze, bs))
            if val is not None:
                loss = _train_mode_loss_on(candidate, val, bs)
                losses.append(round(loss, decimals) if decimals is not None else loss)
        else:
            losses = [_loss_on(candidate, part) for part in (val, freeze) if part is not None]
        score = float(sum(losses) / len(losses)) if losses else 0.0
        return round(score, decimals) if decimals is not None else score

    def train_candidate(
        self, candidate: CLModule, experience: Experience, split: Split | None = None
    ) -> None:
        """One epoch of ``candidate`` on the experience's (reduced) training data (``split``:
        that data with its dream rows, built once for all candidates)."""
        assert self._train is not None
        self._wscl_runner.fit(
            split if split is not None else self._train,
            experience.task_label,
            epochs=1,
            module=candidate,
            stream=CANDIDATE_STREAM,
        )

    def _select_freezing(self, experience: Experience) -> None:
        module = self.module
        depths = candidate_depths(self.frozen_depth, self.cfg.max_candidates)
        self._pool = None  # candidates rebuild the dream pool instead of copying it
        assert self._train is not None
        trial = self._with_dreams(self._train)  # the same batches for every candidate
        self._pool = None
        best: CLModule | None = None
        best_loss, losses = float("inf"), []
        for depth in depths:
            candidate = module.clone()
            plugin = next(p for p in candidate.plugins if isinstance(p, WSCL))
            plugin.frozen_depth = depth
            apply_freezing(candidate.backbone, depth)
            self.train_candidate(candidate, experience, trial)
            loss = self.score(candidate)
            losses.append(loss)
            log.info("wscl candidate depth %d (%s): loss %.4f", depth, frozen_units(depth), loss)
            if loss < best_loss or best is None:
                best, best_loss = candidate, loss
            else:
                del candidate
        chosen = depths[select_candidate(losses)]
        assert best is not None
        self.adopt(best, chosen)
        self.last_selection = {"depths": depths, "losses": losses, "chosen": chosen}
        log.info("wscl experience %d: frozen %s", experience.index + 1, frozen_units(chosen))
        if self.cfg.trial_epoch_counts:
            # the trial epoch is epoch 0 of the experience (reference code): the main training
            # continues with epoch 1 with fresh optimizers over the still-trainable parameters
            module.begin_experience(experience.index)
            module.epoch_in_experience = 1
            module.batches_done_in_epoch = 0
            self._wscl_runner._resume_mid_experience = True

    def adopt(self, best: CLModule, depth: int) -> None:
        """Copy the chosen candidate into the run's model and apply its freezing.

        ``adopt: all`` (default): weights, plug-in tensors, buffer and STM: the trial epoch
        counts fully. ``adopt: weights``: backbone + head only, as the reference code (which
        copies ``net.state_dict()``): the buffer and the base method's state stay as they were
        before the trial epoch, so with one epoch per experience the buffer never receives
        rows after the first experience (a quirk of the reference, kept for parity).
        """
        module = self.module
        if self.cfg.adopt == "weights":
            module.backbone.load_state_dict(best.backbone.state_dict())
            module.head.load_state_dict(best.head.state_dict())
        else:
            module.load_state_dict(best.state_dict())
            if module.buffer is not None and best.buffer is not None:
                module.buffer.load_state_dict(best.buffer.state_dict())
            twin = next(p for p in best.plugins if isinstance(p, WSCL))
            self.stm, self.stm_seen = dict(twin.stm), twin.stm_seen  # trial-epoch samples
        module.step_count = best.step_count
        self.frozen_depth = depth
        apply_freezing(module.backbone, depth)

    def _frozen_bn(self) -> list[nn.Module]:
        return [
            m
            for u in unit_modules(self.module.backbone, self.frozen_depth)
            for m in u.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def prepare_batch(self, batch: Batch) -> Batch:
        if self.cfg.freeze_bn_stats and self.frozen_depth > 0:
            for bn in self._frozen_bn():  # Lightning puts the model in train mode every epoch
                bn.eval()
        if self.cfg.dream and self.cfg.dream_stage == "joint":
            return super().prepare_batch(batch)
        return batch

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        if not self.cfg.nrem or self.cfg.stm_size == 0:
            return
        n = batch.n_stream
        self.stm_add(x=batch.x_raw[:n], y=batch.y[:n], t=batch.t[:n])

    # -------------------------------------------------------------- memories
    def stm_add(self, **rows: torch.Tensor) -> None:
        """Reservoir insertion into the short-term memory (current experience's samples)."""
        size, cap = len(self.stm.get("y", ())), self.cfg.stm_size
        n = len(rows["y"])
        if not self.stm:
            self.stm = {k: v[:0].detach().cpu().clone() for k, v in rows.items()}
        gen = torch.Generator().manual_seed(self.run_seed * 7_919 + self.stm_seen)
        keep, slots = [], []
        for i in range(n):
            seen = self.stm_seen + i
            if size < cap:
                keep.append(i)
                slots.append(size)
                size += 1
            else:
                j = int(torch.randint(seen + 1, (1,), generator=gen))
                if j < cap:
                    keep.append(i)
                    slots.append(j)
        self.stm_seen += n
        if not keep:
            return
        for k, v in rows.items():
            v = v.detach().cpu()
            store = self.stm[k]
            grow = max(slots) + 1 - len(store)
            if grow > 0:
                store = torch.cat([store, v[:1].expand(grow, *v.shape[1:]).clone()])
            store[torch.tensor(slots)] = v[torch.tensor(keep)]
            self.stm[k] = store

    def consolidate(self) -> int:
        """STM -> LTM: the STM rows are offered to the shared buffer (its policy decides)."""
        if not self.stm or len(self.stm["y"]) == 0:
            return 0
        buffer = self.buffer
        device = buffer.device
        rows = {k: v.to(device) for k, v in self.stm.items()}
        for name in buffer.fields:
            if name not in rows:
                if name != "logits":
                    raise ConfigError(
                        "strategy.wscl.nrem",
                        f"the buffer stores a field '{name}' the STM cannot provide",
                        "use nrem with er, er_ace or derpp",
                    )
                rows["logits"] = self._logits(rows["x"]).to(device)
        buffer.add(**rows)
        n = len(self.stm["y"])
        self.stm, self.stm_seen = {}, 0
        return n

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        out = []
        was = module.training
        module.eval()
        for s in range(0, len(x), 500):
            out.append(module.predict_logits(x[s : s + 500].to(module.device)).cpu())
        module.train(was)
        return torch.cat(out)

    # ------------------------------------------------------------------ sleep
    def after_experience(self, experience: Experience) -> None:
        if self.cfg.nrem:
            if self._ltm_snapshot is not None:
                # the engine offered wake samples to the shared buffer: in paper mode only the
                # consolidation writes the LTM, so restore it to its state before the wake
                self.buffer.load_state_dict(self._ltm_snapshot)
                self._ltm_snapshot = None
            self.nrem(experience)
            self.consolidate()
        if self.cfg.dream and self.cfg.dream_stage == "separate":
            self.rem(experience)

    def _sleep_optimizer(self, lr: float | None) -> torch.optim.Optimizer:
        base = self.module.optimizer_config
        return torch.optim.SGD(self.module.trainable_parameters(), lr=lr or float(base.lr))

    def _batch_size(self) -> int:
        return int(self.cfg.sleep_batch_size or self._wscl_runner.trainer_cfg.batch_size)

    def nrem(self, experience: Experience) -> None:
        """Replay STM + LTM with the replay CE; plasticity step at the end of every epoch."""
        module = self.module
        parts = [self.buffer.all(["x", "y"])] if not self.buffer.is_empty else []
        if self.stm:
            parts.append({"x": self.stm["x"], "y": self.stm["y"]})
        if not parts or self.cfg.nrem_epochs == 0:
            return
        device = module.device
        x = torch.cat([p["x"].to(device) for p in parts])
        y = torch.cat([p["y"].to(device) for p in parts])
        params = [p for p in module.trainable_parameters() if p.dim() > 1]
        score_fn = IMPORTANCE[self.cfg.importance]
        opt = self._sleep_optimizer(self.cfg.nrem_lr)
        module.train()
        bs = self._batch_size()
        for epoch in range(self.cfg.nrem_epochs):
            scores = [torch.zeros_like(p) for p in params]
            seed = epoch_seed(self.run_seed, experience.index, epoch, NREM_STREAM)
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            for s in range(0, len(y), bs):
                idx = order[s : s + bs].to(device)
                logits = module.run_forward(module.transform.train(x[idx]), "replay").logits
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for sc, p in zip(scores, params, strict=True):
                    if p.grad is not None:
                        sc += score_fn(p.detach(), p.grad)
                opt.step()
            if self.cfg.plasticity_fraction > 0 and self.cfg.plasticity_strength > 0:
                plasticity_step(
                    params, scores, self.cfg.plasticity_fraction, self.cfg.plasticity_strength
                )

    def rem(self, experience: Experience) -> None:
        """Separate REM stage: dream classes on their free heads (paper reading)."""
        if self.cfg.rem_epochs == 0:
            return
        module = self.module
        pool = self.pool(module.device)
        n = len(pool.heads)
        if n == 0:
            return
        opt = self._sleep_optimizer(self.cfg.rem_lr)
        mask = None
        if self.cfg.rem_free_heads_only:
            mask = torch.zeros(self.ctx.heads.n_heads, dtype=torch.bool, device=module.device)
            mask[pool.heads.unique()] = True
        module.train()
        bs = self._batch_size()
        n_real = self._n_real.get(experience.index) or len(experience.train)
        n_use = min(n, self.cfg.rem_samples if self.cfg.rem_samples is not None else n_real)
        for epoch in range(self.cfg.rem_epochs):
            seed = epoch_seed(self.run_seed, experience.index, epoch, REM_STREAM)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_use]
            for s in range(0, n_use, bs):
                idx = order[s : s + bs].to(pool.x.device)
                logits = module.run_forward(module.transform.train(pool.x[idx])).logits
                if mask is not None:
                    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
                loss = F.cross_entropy(logits, pool.heads[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        return {
            "frozen_depth": self.frozen_depth,
            "freeze_x": self.freeze_x,
            "freeze_y": self.freeze_y,
            "stm": dict(self.stm),
            "stm_seen": self.stm_seen,
        }

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        self.frozen_depth = int(state.get("frozen_depth", 0))
        self.freeze_x, self.freeze_y = state.get("freeze_x"), state.get("freeze_y")
        self.stm = dict(state.get("stm") or {})
        self.stm_seen = int(state.get("stm_seen", 0))
        if self.frozen_depth:
            apply_freezing(self.module.backbone, self.frozen_depth)
