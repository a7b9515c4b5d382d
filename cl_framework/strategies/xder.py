"""eXtended Dark Experience Replay (X-DER; Boschini, Bonicelli, Buzzega, Porrello, Calderara,
"Class-Incremental Continual Learning into the eXtended DER-verse", TPAMI 2022), following
Mammoth's ``models/xder.py`` (and ``xder_ce.py``: ``lambd: 0`` below), the authors' code.

Per stream step of experience ``k`` (heads grouped by experience: past < k, current k,
future > k):

* ``ce``: cross-entropy of the stream rows over the **current** heads only (``logit_mask``).
* ``xder_der``: ``alpha * MSE(f(x_b), z_b)`` over all heads on a replay draw.
* ``xder_derpp``: ``beta * CE`` over the **past** heads on a second replay draw.
* **Future-past update** (the "memory update" of the paper): every drawn row (duplicates
  dropped) with an update counter ``c`` (+1 per draw) is, with probability ``1 / c``, given
  new stored logits on the current and future heads: the network's present output there,
  capped below its stored ground-truth logit ``z[y]`` (``bounded_transplant``).
* ``xder_future``: ``constr_eta * mean(relu(max f_future + m - max f_own))`` over the
  violating rows (stream rows and both draws; ``own`` = the heads of the row's experience),
  until the last experience.
* ``xder_past`` (``past_constraint``, off by default): the same on the softmax over seen
  heads, past heads (detached) vs current ones, for the stream rows.
* ``xder_supcon`` (the "future preparation"): SupCon (``simclr_temp``) on each future
  experience's group of logits, L2-normalised, over ``simclr_num_aug`` strong augmentations
  of the stream rows and ``simclr_batch_size`` buffer rows, times ``lambd``, divided by
  (future groups x rows).
* ``xder_dp`` (``dp_weight`` > 0): SP-KD between those buffer rows' future-group outputs
  and their stored logits.

At the end of each experience the memory is rebuilt class-balanced (``fills_buffer``): the
old classes keep their first ``size // seen classes`` rows, the new ones fill the rest equally
(random rows; the remainder goes to random classes) with their logits, whose past heads are
scaled as above ("present-past" update); then every older row gets the future-past update
on heads >= k.

Where we differ from Mammoth (documented in ``docs/baselines.md``): the cap of
transplanted logits when the true-class logit is <= 0 (a shift, where Mammoth's scale flips
signs and can overflow; ``bounded_transplant``); stored logits and the
end-of-experience update are computed on un-augmented rows in eval mode (Mammoth: the
train loader's augmented view in train mode without BatchNorm statistics; identical for
Seq-MNIST, which has no augmentation, and its MLP); Mammoth's ``align_bn`` (stream rows
appended to a replay forward for BatchNorm statistics) is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyContext
from cl_framework.errors import ConfigError
from cl_framework.losses import similarity_preserving_loss, supervised_contrastive_loss
from cl_framework.scenarios import Experience
from cl_framework.scenarios.transforms import StrongAugmentation
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin

#: Salts mixed with the run seed for this plug-in's generators.
_MEMORY_SALT, _UPDATE_SALT, _AUG_SALT = 7_717, 7_723, 7_727

_FIELDS = ("x", "y", "t", "logits", "exp")


def bounded_transplant(
    stored: torch.Tensor, new: torch.Tensor, target: torch.Tensor, heads: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``stored`` with its ``heads`` columns replaced by ``new``'s, capped so that a
    transplanted head never outscores the row's stored true-class logit ``z = stored[y]``.

    Where ``max(new[heads]) > z`` the part is brought down to a maximum of
    ``cap = z - (1 - gamma) |z|``: for ``z > 0`` by Mammoth's scaling (``* gamma z / max``,
    so ``cap = gamma z``); for ``z <= 0``, where that scale is negative (it flips the signs)
    and unbounded as ``max -> 0``, by a shift (``- (max - cap)``): our deviation, which
    keeps the logits finite (docs/baselines.md).
    """
    out = stored.clone()
    part = new[:, heads].clone()
    truth = stored.gather(1, target.view(-1, 1)).squeeze(1)
    top = part.max(1).values
    over = top > truth
    cap = truth - (1.0 - gamma) * truth.abs()
    positive = over & (truth > 0)
    scale = torch.where(positive, gamma * truth / torch.where(positive, top, 1.0), 1.0)
    shift = torch.where(over & (truth <= 0), top - cap, 0.0)
    out[:, heads] = part * scale.unsqueeze(1) - shift.unsqueeze(1)
    return out


def first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Mask of the rows whose value appears for the first time in ``index``."""
    if index.numel() < 2:
        return torch.ones_like(index, dtype=torch.bool)
    _, order = torch.sort(index, stable=True)
    ranked = index[order]
    first_sorted = torch.ones_like(ranked, dtype=torch.bool)
    first_sorted[1:] = ranked[1:] != ranked[:-1]
    mask = torch.zeros_like(first_sorted)
    mask[order] = first_sorted
    return mask


@register_strategy
class XDER(RehearsalPlugin):
    name = "xder"
    fills_buffer = True
    needs_in_memory_data = True

    @dataclass
    class Config:
        alpha: float = 0.3  # weight of the logit MSE (all heads)
        beta: float = 0.8  # weight of the replay CE (past heads)
        minibatch_size: int = 32  # rows per replay draw (two draws per step)
        gamma: float = 0.85  # bound of transplanted logits: gamma * stored true logit
        lambd: float = 0.05  # weight of SupCon on the future heads (0 = Mammoth's xder_ce)
        simclr_temp: float = 5.0  # SupCon temperature (= base temperature)
        simclr_batch_size: int = 64  # buffer rows in the SupCon batch (with the stream rows)
        simclr_num_aug: int = 4  # strong augmentations per row
        constr_eta: float = 0.1  # weight of the past / future logit constraints
        constr_margin: float = 0.3  # their margin
        future_constraint: bool = True
        past_constraint: bool = False
        dp_weight: float = 0.0  # SP-KD on the buffer rows' future heads (0 = off)
        logits_batch_size: int = 512  # rows per forward at experience end (memory only)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        for key in ("minibatch_size", "simclr_batch_size", "simclr_num_aug", "logits_batch_size"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"strategy.xder.{key}", "must be >= 1", f"set {key} >= 1")
        if cfg.simclr_num_aug < 2 and cfg.lambd > 0:
            raise ConfigError(
                "strategy.xder.simclr_num_aug",
                "SupCon needs at least 2 views per row",
                "set simclr_num_aug: 4 (or lambd: 0 to switch SupCon off)",
            )
        for key in ("alpha", "beta", "lambd", "constr_eta", "dp_weight", "simclr_temp"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"strategy.xder.{key}", "must be >= 0", f"set {key} >= 0")
        if not 0 < cfg.gamma <= 1:
            raise ConfigError("strategy.xder.gamma", "must be in (0, 1]", "set gamma: 0.85")
        self._generator: torch.Generator | None = None
        self._augment: StrongAugmentation | None = None
        self._group_cache: tuple[tuple[int, str], torch.Tensor] | None = None

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        classes = [set(e.classes) for e in ctx.scenario.experiences]
        if len(set().union(*classes)) != sum(len(c) for c in classes):
            raise ConfigError(
                "strategy",
                "xder groups heads by experience and needs experiences of disjoint classes "
                f"(class-IL / task-IL); scenario '{ctx.scenario.name}' repeats classes",
                "use a class-incremental scenario, or another replay method for domain-IL",
            )
        self.register_buffer("update_counter", torch.zeros(ctx.buffer.capacity))
        shape = ctx.scenario.input_shape
        self._augment = StrongAugmentation(
            size=(shape[1], shape[2]),
            mean=ctx.scenario.mean,
            std=ctx.scenario.std,
            seed=self.run_seed * 1_000_003 + _AUG_SALT,
        )

    # ------------------------------------------------------------ head groups
    def _groups(self) -> torch.Tensor:
        """(n_experiences, n_heads) bool on the training device: each experience's heads
        (cached per experience: heads are bound before an experience starts)."""
        key = (self.module.experience_index, str(self.module.device))
        if self._group_cache is None or self._group_cache[0] != key:
            scenario = self.ctx.scenario
            mask = self.module.heads.task_mask([e.classes for e in scenario.experiences])
            self._group_cache = (key, mask.to(self.module.device))
        return self._group_cache[1]

    def _split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(groups, past, current, future) head masks for the current experience."""
        groups, k = self._groups(), self.module.experience_index
        return groups, groups[:k].any(0), groups[k], groups[k + 1 :].any(0)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(
                self.run_seed * 1_000_003 + _UPDATE_SALT
            )
        return self._generator

    # ------------------------------------------------------------ step hooks
    def logit_mask(self, batch: Batch) -> torch.Tensor | None:
        return self._groups()[self.module.experience_index]

    def prepare_batch(self, batch: Batch) -> Batch:
        k = self.module.experience_index
        fields = ("x", "y", "logits", "exp")
        for side in ("xder_der", "xder_derpp"):
            draw = self.draw(self.cfg.minibatch_size, fields)
            if draw is not None:
                targets = {key: draw[key] for key in ("y", "logits", "exp", "index")}
                batch = batch.with_side(side, draw["x"], **targets)
        if k < self.ctx.scenario.n_experiences - 1 and (
            self.cfg.lambd > 0 or self.cfg.dp_weight > 0
        ):
            raw, y = batch.x_raw[: batch.n_stream], batch.y[: batch.n_stream]
            n_buf = 0
            logits = None
            if not self.buffer.is_empty:
                extra = self.buffer.sample(self.cfg.simclr_batch_size, ["x", "y", "logits"])
                n_buf = len(extra["y"])
                raw = torch.cat([extra["x"].to(raw.device, raw.dtype), raw])
                y = torch.cat([extra["y"].to(y.device), y])
                logits = extra["logits"]
            assert self._augment is not None
            with torch.no_grad():
                views = self._augment(raw.repeat_interleave(self.cfg.simclr_num_aug, 0))
            targets = {"y": y, "n_buf": torch.tensor(n_buf)}
            if logits is not None:
                targets["logits"] = logits
            batch = batch.with_side("xder_scl", views, **targets)
        return batch

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        cfg, k = self.cfg, self.module.experience_index
        groups, past, current, future = self._split()
        terms: dict[str, torch.Tensor] = {}
        stream = out.logits[: batch.n_stream]
        replay = [name for name in ("xder_der", "xder_derpp") if name in out.sides]
        if "xder_der" in out.sides:
            side = batch.sides["xder_der"].targets
            terms["xder_der"] = cfg.alpha * F.mse_loss(out.sides["xder_der"].logits, side["logits"])
        if "xder_derpp" in out.sides and past.any():
            logits = out.sides["xder_derpp"].logits
            masked = logits.masked_fill(~past, torch.finfo(logits.dtype).min)
            terms["xder_derpp"] = cfg.beta * F.cross_entropy(
                masked, batch.sides["xder_derpp"].targets["y"]
            )
        if replay:
            merged = {
                key: torch.cat([batch.sides[n].targets[key] for n in replay])
                for key in ("y", "logits", "exp", "index")
            }
            merged_out = torch.cat([out.sides[n].logits for n in replay])
            keep = first_occurrence(merged["index"])
            merged = {key: value[keep] for key, value in merged.items()}
            merged_out = merged_out[keep]
            self._update_future_past(merged, merged_out.detach(), groups, k)
        else:
            merged, merged_out = None, None
        if cfg.future_constraint and future.any():
            bad = [stream[:, future]]
            good = [stream[:, current].max(1).values]
            if merged is not None:
                bad.append(merged_out[:, future])
                own = groups[merged["exp"].to(groups.device).long()]
                floor = torch.finfo(merged_out.dtype).min
                good.append(merged_out.masked_fill(~own, floor).max(1).values)
            gap = torch.cat(bad).max(1).values + cfg.constr_margin - torch.cat(good)
            if bool((gap > 0).any()):
                terms["xder_future"] = cfg.constr_eta * gap[gap > 0].mean()
        if cfg.past_constraint and k > 0:
            seen = past | current
            probs = stream[:, seen].softmax(1)
            in_seen_past = past[seen]
            gap = (
                probs[:, in_seen_past].max(1).values.detach()
                + cfg.constr_margin
                - probs[:, ~in_seen_past].max(1).values
            )
            if bool((gap > 0).any()):
                terms["xder_past"] = cfg.constr_eta * gap[gap > 0].mean()
        if "xder_scl" in out.sides:
            terms.update(self._future_preparation(batch, out, groups, k))
        return terms

    def _future_preparation(
        self, batch: Batch, out: ForwardOutput, groups: torch.Tensor, k: int
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        side = batch.sides["xder_scl"].targets
        views = out.sides["xder_scl"].logits
        features = views.view(-1, cfg.simclr_num_aug, views.shape[-1])
        future_groups = [g for g in groups[k + 1 :] if bool(g.any())]
        terms: dict[str, torch.Tensor] = {}
        if cfg.lambd > 0:
            total = sum(
                supervised_contrastive_loss(
                    F.normalize(features[:, :, g], dim=2),
                    side["y"],
                    temperature=cfg.simclr_temp,
                    reduction="sum",
                )
                for g in future_groups
            )
            terms["xder_supcon"] = cfg.lambd * total / (len(future_groups) * features.shape[0])
        n_buf = int(side["n_buf"])
        if cfg.dp_weight > 0 and n_buf > 0:
            stored = side["logits"]
            parts = [
                similarity_preserving_loss(features[:n_buf, v][:, g], stored[:, g])
                for g in future_groups
                for v in range(cfg.simclr_num_aug)
            ]
            terms["xder_dp"] = cfg.dp_weight * torch.stack(parts).mean()
        return terms

    @torch.no_grad()
    def _update_future_past(
        self, rows: dict[str, torch.Tensor], outputs: torch.Tensor, groups: torch.Tensor, k: int
    ) -> None:
        """Rows of older experiences get, with probability 1 / (times drawn), new logits on
        the heads of experiences >= k (Mammoth's update with ``update_counter``)."""
        counter = self.update_counter
        index = rows["index"].to(counter.device)
        older = (rows["exp"] < k).to(counter.device)
        if not bool(older.any()):
            return
        counter[index[older]] += 1
        u = torch.rand(int(older.sum()), generator=self.generator).to(counter.device)
        chosen = older.clone()
        chosen[older] = u * counter[index[older]] < 1
        sel = chosen.nonzero().squeeze(1)
        if not sel.numel():
            return
        heads = groups[k:].any(0).nonzero().squeeze(1)
        dev = outputs.device
        sel_dev = sel.to(dev)
        new = bounded_transplant(
            rows["logits"].to(dev)[sel_dev],
            outputs[sel_dev],
            rows["y"].to(dev)[sel_dev],
            heads.to(dev),
            self.cfg.gamma,
        )
        slots = rows["index"][sel.to(rows["index"].device)]
        self.buffer.update(slots, logits=new.to(self.buffer.device, rows["logits"].dtype))

    # ------------------------------------------------------- experience end

    def after_experience(self, experience: Experience) -> None:
        buffer, k = self.buffer, experience.index
        self._group_cache = None
        groups = self._groups()
        kept: dict[str, list[torch.Tensor]] = {key: [] for key in _FIELDS}
        heads_map = self.module.heads
        n_seen = len(self.ctx.scenario.classes_up_to(k))
        if not buffer.is_empty:
            per_class = buffer.capacity // n_seen
            memory = buffer.all(list(_FIELDS))
            for label in memory["y"].unique().tolist():
                rows = (memory["y"] == label).nonzero()[:, 0][:per_class]
                for key in kept:
                    kept[key].append(memory[key][rows].clone())
        n_kept = sum(len(p) for p in kept["y"])
        free = buffer.capacity - n_kept
        classes = list(experience.classes)
        quota = torch.full((len(classes),), free // len(classes), dtype=torch.long)
        generator = torch.Generator().manual_seed(
            (self.run_seed * 1_000_003 + k) * 31 + _MEMORY_SALT
        )
        extra = free - int(quota.sum())
        quota[torch.randperm(len(classes), generator=generator)[:extra]] += 1
        split = experience.train
        own = torch.arange(len(split)) if split.head is None else (split.head < 0).nonzero()[:, 0]
        order = own[torch.randperm(len(own), generator=generator)]
        labels = split.y[order]
        chosen = [
            order[labels == c][: int(q)] for c, q in zip(classes, quota.tolist(), strict=True)
        ]
        rows = torch.cat(chosen).sort().values
        x = split.x[rows]
        y = heads_map.map(split.y[rows].to(self.module.device))
        logits = self.memory_logits(x, self.cfg.logits_batch_size)
        past = groups[:k].any(0).nonzero().squeeze(1)
        if k > 0 and past.numel():
            logits = bounded_transplant(logits, logits, y, past, self.cfg.gamma)
        device = buffer.device
        kept["x"].append(x.to(device))
        kept["y"].append(y.to(device))
        kept["t"].append(split.task_labels(experience.task_label)[rows].to(device))
        kept["logits"].append(logits.to(device))
        kept["exp"].append(torch.full((len(rows),), k, device=device))
        buffer.replace_contents(**{key: torch.cat(parts) for key, parts in kept.items()})
        # future-past update of every older row on the heads of experiences >= k
        memory = buffer.all(list(_FIELDS))
        older = (memory["exp"] < k).nonzero().squeeze(1)
        if older.numel():
            heads = groups[k:].any(0).nonzero().squeeze(1).to(device)
            outputs = self.memory_logits(memory["x"][older], self.cfg.logits_batch_size).to(device)
            new = bounded_transplant(
                memory["logits"][older], outputs, memory["y"][older], heads, self.cfg.gamma
            )
            buffer.update(older, logits=new)
        self.update_counter.zero_()

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict:
        return {"generator": None if self._generator is None else self._generator.get_state()}

    def load_plugin_state(self, state: Mapping) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
