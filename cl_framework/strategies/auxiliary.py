"""Auxiliary stream ("Effects of Auxiliary Knowledge on Continual Learning", ICPR 2022).

Compose with a rehearsal base method: ``strategy=[derpp, auxiliary]`` (or ``er`` / ``er_ace``).
The output layer has one head per benchmark class (+ ``add_aux_classes``). At start-up every
head is free and is bound to a class of the auxiliary dataset (drawn at random with the run
seed, or in order when the counts match). Each experience's classes are assigned to free heads
before the experience is first evaluated: experience 0 to the lowest heads, later ones by the
greedy most-activated rule (or at random). The auxiliary images of the classes still bound to
free heads, relabelled to those heads, train with the experience's data: by default
(``mixing: union``) as one shuffled union with the experience's training images, as the
reference code's single loader does, so an epoch has more (mixed) steps; or
(``mixing: append``) as rows appended to every stream batch. They share the base method's
cross-entropy, and never enter the replay buffer (only the experience's rows are offered to
it). See ``docs/auxiliary.md`` for the method, every key and the choices made where the
paper is silent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cl_framework.engine.heads import predict_heads
from cl_framework.engine.plugin import Batch, StrategyContext, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience, Split, available_sources
from cl_framework.scenarios.auxiliary import AUXILIARY_PRESETS, load_auxiliary, match_input_shape
from cl_framework.scenarios.loader import PoolOrder
from cl_framework.scenarios.sources import DataSource
from cl_framework.strategies.registry import register_strategy

log = logging.getLogger(__name__)

OWNER = "auxiliary"
NEXT_HEADS = ("most_activated", "random")
MIXING = ("union", "append")
#: Shuffle streams of the auxiliary sampling (stream + cycle), apart from the runner's 0 and 1.
AUX_STREAM = 1_000
#: Seed offsets of the class draw and of random head assignment (mixed with the run seed).
_BIND_SALT, _ASSIGN_SALT = 7_919, 104_729


@dataclass
class _Pool:
    """The auxiliary images of the classes bound to free heads, labelled with their heads."""

    key: tuple[Any, ...]
    x: torch.Tensor
    heads: torch.Tensor


@register_strategy
class AuxiliaryStream(StrategyPlugin):
    name = "auxiliary"

    @dataclass
    class Config:
        dataset: Any = None  # str, or a list of str (one auxiliary dataset per experience)
        options: dict[str, Any] = field(default_factory=dict)
        data_dir: str | None = None
        match_input_shape: bool = True
        add_aux_classes: int = 0
        next_heads: str = "most_activated"
        aux_batch_size: int | None = None
        aux_ratio: Any = "dataset"
        assign_batch_size: int = 256
        mixing: str = "union"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.datasets = self._validate(cfg)
        self.sources: list[DataSource] = []
        self._pool: _Pool | None = None
        self._order = PoolOrder(AUX_STREAM)
        self._n_real: dict[int, int] = {}

    # ------------------------------------------------------------ validation
    @staticmethod
    def _validate(cfg: Config) -> list[str]:
        """Checks needing no data: one ConfigError naming the key."""
        key = "strategy.auxiliary"
        fix = "e.g. strategy.auxiliary.dataset=fashion-mnist (or a list, one per experience)"
        names = cfg.dataset if isinstance(cfg.dataset, list) else [cfg.dataset]
        if cfg.dataset is None or not names:
            raise ConfigError(f"{key}.dataset", "is required (no auxiliary dataset given)", fix)
        known = [*AUXILIARY_PRESETS, *available_sources()]
        for name in names:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{key}.dataset", f"must name a dataset, got {name!r}", fix)
            if name not in known:
                raise ConfigError(
                    f"{key}.dataset",
                    f"unknown auxiliary dataset '{name}'",
                    "use a preset (" + ", ".join(AUXILIARY_PRESETS) + ") or a registered "
                    "source (" + ", ".join(available_sources()) + ")",
                )
        if cfg.next_heads not in NEXT_HEADS:
            raise ConfigError(
                f"{key}.next_heads", f"unknown rule '{cfg.next_heads}'", f"use one of {NEXT_HEADS}"
            )
        if cfg.add_aux_classes < 0:
            raise ConfigError(f"{key}.add_aux_classes", "must be >= 0")
        if cfg.aux_batch_size is not None and cfg.aux_batch_size < 0:
            raise ConfigError(f"{key}.aux_batch_size", "must be >= 0 or null")
        ratio = cfg.aux_ratio
        numeric = isinstance(ratio, int | float) and not isinstance(ratio, bool)
        if not (ratio == "dataset" or (numeric and math.isfinite(ratio) and ratio >= 0)):
            raise ConfigError(
                f"{key}.aux_ratio",
                f"must be 'dataset' or a number >= 0, got {ratio!r}",
                "'dataset' = auxiliary/real training sizes of the experience (the reference's "
                "shuffled union), or e.g. 1.0 = as many auxiliary rows as stream rows",
            )
        if cfg.assign_batch_size <= 0:
            raise ConfigError(f"{key}.assign_batch_size", "must be positive")
        if cfg.mixing not in MIXING:
            raise ConfigError(
                f"{key}.mixing",
                f"unknown '{cfg.mixing}'",
                "union (one shuffled loader over real + auxiliary images, as the reference "
                "code) or append (auxiliary rows appended to every stream batch)",
            )
        if cfg.mixing == "union" and cfg.aux_batch_size is not None:
            raise ConfigError(
                f"{key}.aux_batch_size",
                "only applies to mixing=append (a union has no per-step auxiliary count)",
                "set strategy.auxiliary.mixing=append, or size the union with aux_ratio",
            )
        return list(names)

    def extra_heads(self) -> int:
        return self.cfg.add_aux_classes

    # ----------------------------------------------------------------- setup
    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        scenario = ctx.scenario
        if scenario.setting != "class-il":
            raise ConfigError(
                "scenario.setting",
                f"the auxiliary stream trains over all heads; setting '{scenario.setting}' is "
                "not supported",
                "use scenario.setting=class-il (task-IL accuracy is reported as well)",
            )
        if len(self.datasets) > 1 and len(self.datasets) != scenario.n_experiences:
            raise ConfigError(
                "strategy.auxiliary.dataset",
                f"lists {len(self.datasets)} datasets for {scenario.n_experiences} experiences",
                "give one dataset for the run or exactly one per experience",
            )
        if self.cfg.mixing == "union" and not isinstance(scenario[0].train.x, torch.Tensor):
            raise ConfigError(
                f"strategy.{self.name}.mixing",
                "a union needs the benchmark's images in memory, but this scenario streams them "
                "from disk",
                f"set strategy.{self.name}.mixing=append, or scenario.storage=memory",
            )
        self.sources = [self._load(name, ctx) for name in dict.fromkeys(self.datasets)]
        by_name = dict(zip(dict.fromkeys(self.datasets), self.sources, strict=True))
        self.sources = [by_name[name] for name in self.datasets]
        n_aux = self.sources[0].n_classes
        if any(s.n_classes != n_aux for s in self.sources):
            counts = {s.name: s.n_classes for s in self.sources}
            raise ConfigError(
                "strategy.auxiliary.dataset",
                f"the per-experience datasets differ in their number of classes {counts}",
                "class k of every dataset trains the same head: use datasets with equal counts",
            )
        heads = ctx.heads
        if n_aux < heads.n_heads:
            raise ConfigError(
                "strategy.auxiliary.add_aux_classes"
                if self.cfg.add_aux_classes
                else "strategy.auxiliary.dataset",
                f"'{self.datasets[0]}' has {n_aux} classes but {heads.n_heads} heads "
                f"({scenario.n_classes} classes + {self.cfg.add_aux_classes} extra) need one each",
                "use an auxiliary dataset with at least as many classes as heads, or fewer "
                "add_aux_classes",
            )
        heads.release()
        generator = torch.Generator().manual_seed(self.run_seed * 1_000_003 + _BIND_SALT)
        bound = heads.bind_classes(OWNER, n_aux, generator=generator)
        names = self.sources[0].class_names
        log.info("auxiliary classes bound to heads 0..: %s", [names[c] for c in bound.tolist()])

    def _load(self, name: str, ctx: StrategyContext) -> DataSource:
        data_dir = self.cfg.data_dir
        if data_dir is None:
            runner = ctx.runner
            paths = (runner.config.get("paths") if runner is not None else None) or {}
            data_dir = paths.get("data_dir", "./data")
        try:
            source = load_auxiliary(name, Path(str(data_dir)), **dict(self.cfg.options))
        except ConfigError as exc:
            if exc.key.startswith(("scenario.source_options", "auxiliary.")):
                option = exc.key.rsplit(".", 1)[-1]
                raise ConfigError(
                    f"strategy.auxiliary.options.{option}", exc.problem, exc.fix
                ) from None
            raise
        target = ctx.scenario.input_shape
        if source.input_shape != target:
            if not self.cfg.match_input_shape:
                raise ConfigError(
                    "strategy.auxiliary.match_input_shape",
                    f"'{name}' images are {source.input_shape}, the benchmark's {target}",
                    "set match_input_shape=true to resize / convert the auxiliary images",
                )
            source = match_input_shape(source, (target[1], target[2]), target[0])
        # only the training images are used: drop the test split's memory
        return replace(source, test_x=source.test_x[:0], test_y=source.test_y[:0])

    # ---------------------------------------------------------- head mapping
    def assign_heads(self, experience: Experience) -> None:
        heads = self.ctx.heads
        classes = list(experience.classes)
        if bool(heads.assigned[classes].all()):
            return
        if experience.index == 0:
            chosen, rule = heads.assign_in_order(classes), "in order"
        elif self.cfg.next_heads == "random":
            seed = (self.run_seed * 1_000_003 + _ASSIGN_SALT) * 10_007 + experience.index
            chosen = heads.assign_random(classes, torch.Generator().manual_seed(seed))
            rule = "random"
        else:
            train = experience.train
            predictions = predict_heads(self.module, train.x, self.cfg.assign_batch_size)
            chosen = heads.assign_most_activated(classes, train.y, predictions)
            rule = "most activated"
        module = self.module
        task_heads = heads.task_mask([exp.classes for exp in self.ctx.scenario])
        module.task_heads.copy_(task_heads.to(module.task_heads.device))
        self._pool = None
        log.info(
            "experience %d: classes %s -> heads %s (%s); %d heads still auxiliary",
            experience.index + 1,
            classes,
            chosen.tolist(),
            rule,
            len(heads.bindings(OWNER)[0]),
        )

    # ------------------------------------------------------------- training
    def train_data(self, experience: Experience, split: Split) -> Split:
        self._n_real[experience.index] = split.n_own
        if self.cfg.mixing != "union":
            return split
        return self.union(split)

    def union(self, split: Split) -> Split:
        """``split`` plus the auxiliary rows of the classes bound to free heads, one union.

        ``aux_ratio: dataset`` adds every bound auxiliary image (the reference code); a number
        ``r`` adds ``round(r * own rows)`` of them, drawn without replacement (seeded by the
        run seed and the experience, a new draw per experience).
        """
        pool = self.pool()
        n_pool = len(pool.heads)
        if n_pool == 0:
            return split
        idx = None
        if self.cfg.aux_ratio != "dataset":
            k = min(n_pool, round(float(self.cfg.aux_ratio) * split.n_own))
            idx = self.indices(0, 0, k, n_pool)
        x, heads = (pool.x, pool.heads) if idx is None else (pool.x[idx], pool.heads[idx])
        return split.with_foreign_rows(x, heads)

    def pool(self, device: torch.device | None = None) -> _Pool:
        """The current experience's auxiliary images (bound classes only), cached."""
        index = self.module.experience_index
        source = self.sources[index if len(self.sources) > 1 else 0]
        bound_heads, _ = self.ctx.heads.bindings(OWNER)
        key = (index if len(self.sources) > 1 else 0, tuple(bound_heads.tolist()), device)
        if self._pool is not None and self._pool.key == key:
            return self._pool
        table = self.ctx.heads.class_to_head(OWNER, source.n_classes)
        rows = (table[source.train_y] >= 0).nonzero().squeeze(1)
        x, y = source.train_x[rows], table[source.train_y[rows]]
        if device is not None:
            x, y = x.to(device), y.to(device)
        self._pool = _Pool(key=key, x=x, heads=y)
        self._order.clear()
        return self._pool

    def rows_per_step(self, n_stream: int, n_pool: int) -> int:
        """Auxiliary rows appended to a step with ``n_stream`` stream rows."""
        if n_pool == 0:
            return 0
        if self.cfg.aux_batch_size is not None:
            return self.cfg.aux_batch_size
        return round(self._ratio(n_pool) * n_stream)

    def _ratio(self, n_pool: int) -> float:
        if self.cfg.aux_ratio != "dataset":
            return float(self.cfg.aux_ratio)
        index = self.module.experience_index
        n_real = self._n_real.get(index) or len(self.ctx.scenario[index].train)
        return n_pool / max(n_real, 1)

    def indices(self, epoch: int, start: int, k: int, n: int) -> torch.Tensor:
        """Positions ``start..start+k-1`` of the epoch's auxiliary order (reshuffled per pass;
        exact on resume, see :class:`PoolOrder`)."""
        return self._order.indices(self.run_seed, self.module.experience_index, epoch, start, k, n)

    def prepare_batch(self, batch: Batch) -> Batch:
        if self.cfg.mixing == "union":
            return batch
        pool = self.pool(batch.x_raw.device)
        n_pool = len(pool.heads)
        k = self.rows_per_step(batch.n_stream, n_pool)
        if k == 0:
            return batch
        runner = self.ctx.runner
        full = runner.trainer_cfg.batch_size if runner is not None else batch.n_stream
        module = self.module
        start = module.batches_done_in_epoch * self.rows_per_step(full, n_pool)
        idx = self.indices(module.epoch_in_experience, start, k, n_pool).to(pool.x.device)
        x = module.transform.train(pool.x[idx])
        t = batch.t[:1].expand(k) if len(batch.t) else torch.zeros(k, dtype=torch.long)
        return batch.append(x, pool.heads[idx], t.to(x.device))
