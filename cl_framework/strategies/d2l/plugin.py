"""Dream2Learn (Calcagno et al., arXiv 2603.01935, 2026): the ``d2l`` strategy.

Compose with a rehearsal base: ``strategy=[er_ace, d2l]`` (or ``er``, ``derpp``). No public code
exists; this is our implementation of what is published (see ``docs/d2l.md`` for which parts are
published facts and which are our choices):

* the output layer has one head per benchmark class plus ``extra_heads``; every head starts free
  (head manager); experience 0's classes take the lowest heads;
* **dream episode** after every experience but the last: dream classes whose heads were taken by
  real classes are retired; surviving ones are **refreshed** (their prompts re-optimised for
  ``search.refresh_steps`` under the current classifier); new ones are dreamed until
  ``dream_classes`` live, each bound to a free head (owner ``d2l``) with a prompt initialised
  from a generator class (or at random) and optimised through the frozen generator
  (:func:`~cl_framework.strategies.d2l.dreaming.optimise_prompt`) until the oracle stops it.
  The inventory keeps prompts, not images;
* **training with dreams**: each experience regenerates ``images_per_class`` samples per living
  dream class from the inventory (cached for the experience), and each step appends
  ``dream_ratio`` x stream rows of them, labelled with their heads, next to the stream and the
  base method's replay; dream rows never enter the replay buffer;
* **re-use**: the classes of a later experience take the most-activated dream heads (greedy, as
  in the auxiliary-stream method), which is where forward transfer is expected to come from.
  Only dreams that already trained for an experience are offered: a dream made after
  experience ``k`` trains during ``k + 1`` and may become a real class from ``k + 2`` on
  (:meth:`Dream2Learn.trained_dream_heads`); untrained dream heads stay out of the assignment.

Every episode's prompts, oracle decisions, traces and timings go to ``dreams/d2l.json`` in the run
directory with a PNG grid of samples per dream class (``dreams/experience_<k>.png``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cl_framework.engine.heads import greedy_assignment, predict_heads
from cl_framework.engine.plugin import Batch, StrategyContext, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.generators import ConditionalGenerator, load_generator
from cl_framework.scenarios import Experience
from cl_framework.scenarios.loader import PoolOrder
from cl_framework.strategies.d2l.dreaming import (
    DreamObjective,
    PromptSearch,
    classify,
    optimise_prompt,
)
from cl_framework.strategies.d2l.inventory import DreamClass, PromptInventory, sample_seed
from cl_framework.strategies.d2l.oracle import Oracle, build_oracle, prototype
from cl_framework.strategies.registry import register_strategy

log = logging.getLogger(__name__)

OWNER = "d2l"
INITS = ("generator_class", "seen_class", "random", "interpolation")
NEXT_HEADS = ("most_activated_dream", "most_activated")
#: Shuffle stream of the dream rows (apart from the runner's and the auxiliary stream's).
DREAM_STREAM = 3_000
_DREAM_SALT = 15_485_863


def _stack(vectors: list[torch.Tensor]) -> torch.Tensor:
    """(k, d) stack of prototypes; (0,) when there are none."""
    return torch.stack(vectors) if vectors else torch.zeros(0)


class _GeneratorHolder:
    """Keeps the frozen generator out of the model's module tree (no weights in checkpoints,
    none in any optimizer) and shared, not copied, by ``CLModule.clone``."""

    def __init__(self, generator: ConditionalGenerator | None = None) -> None:
        self.generator = generator

    def __deepcopy__(self, memo: dict[int, Any]) -> _GeneratorHolder:
        return self


@dataclass
class _Pool:
    key: tuple[Any, ...]
    x: torch.Tensor
    heads: torch.Tensor


def _normalised(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def _check_class_names(generator: ConditionalGenerator, benchmark: Sequence[str]) -> None:
    """``init=seen_class`` starts a dream from generator class ``c`` for benchmark label ``c``:
    the two label spaces must be the same, not only the same size (a Fashion-MNIST generator on
    Seq-MNIST would start "digit" dreams from garments)."""
    names = [_normalised(n) for n in getattr(generator, "class_names", [])]
    wanted = [_normalised(n) for n in benchmark]
    if names == wanted:
        return
    if not names:
        found = "the generator has no class names"
    elif len(names) != len(wanted):
        found = f"{len(names)} generator class names for {len(wanted)} benchmark classes"
    else:
        c = next(i for i, (a, b) in enumerate(zip(names, wanted, strict=True)) if a != b)
        found = f"generator class {c} is '{names[c]}', benchmark label {c} is '{wanted[c]}'"
    raise ConfigError(
        "strategy.d2l.init",
        f"seen_class needs the generator's classes to be the benchmark's, in label order; {found}",
        "train the generator on the benchmark's classes (clf-pretrain-generator), give the "
        "diffusers backend generator.options.class_names in label order, or use "
        "init=generator_class / random",
    )


@register_strategy
class Dream2Learn(StrategyPlugin):
    name = "d2l"
    uses_buffer = True

    @dataclass
    class Config:
        generator: dict[str, Any] = field(
            default_factory=lambda: {"backend": "tiny_diffusion", "path": None, "options": {}}
        )
        dream_classes: int = 4
        extra_heads: int | None = None
        init: str = "generator_class"
        img2img: bool = False
        objective: dict[str, Any] = field(default_factory=dict)
        search: dict[str, Any] = field(default_factory=dict)
        oracle: dict[str, Any] = field(default_factory=lambda: {"name": "feature_rule"})
        images_per_class: int = 200
        dream_ratio: float = 0.5
        next_heads: str = "most_activated_dream"
        refresh: bool = True
        prototype_samples: int = 64
        save_grid: bool = True
        grid_per_class: int = 8

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.objective, self.search = self._validate(cfg)
        self.oracle: Oracle = build_oracle(cfg.oracle)
        self._holder = _GeneratorHolder()
        self.inventory = PromptInventory()
        self.episodes: list[dict[str, Any]] = []
        self._pool: _Pool | None = None
        self._order = PoolOrder(DREAM_STREAM)
        self._center: torch.Tensor | None = None

    # ------------------------------------------------------------ validation
    @staticmethod
    def _validate(cfg: Config) -> tuple[DreamObjective, PromptSearch]:
        from cl_framework.config_schema import validate_node

        key = "strategy.d2l"
        if cfg.dream_classes <= 0:
            raise ConfigError(f"{key}.dream_classes", "must be positive")
        if cfg.extra_heads is not None and cfg.extra_heads < cfg.dream_classes:
            raise ConfigError(
                f"{key}.extra_heads",
                f"{cfg.extra_heads} extra heads cannot hold {cfg.dream_classes} dream classes "
                "after the last experience's classes took theirs",
                "null (= dream_classes) or a number >= dream_classes",
            )
        if cfg.init not in INITS:
            raise ConfigError(f"{key}.init", f"unknown '{cfg.init}'", f"use one of {INITS}")
        if cfg.next_heads not in NEXT_HEADS:
            raise ConfigError(
                f"{key}.next_heads", f"unknown '{cfg.next_heads}'", f"use one of {NEXT_HEADS}"
            )
        if cfg.images_per_class <= 0:
            raise ConfigError(f"{key}.images_per_class", "must be positive")
        if not (math.isfinite(cfg.dream_ratio) and cfg.dream_ratio >= 0):
            raise ConfigError(f"{key}.dream_ratio", "must be a number >= 0")
        if cfg.prototype_samples <= 0:
            raise ConfigError(f"{key}.prototype_samples", "must be positive")
        gen = cfg.generator
        if not isinstance(gen, Mapping) or not gen.get("backend"):
            raise ConfigError(
                f"{key}.generator.backend",
                "missing",
                "e.g. {backend: tiny_diffusion, path: outputs/generators/<name>.pt}",
            )
        objective = validate_node(cfg.objective, DreamObjective, f"{key}.objective")
        search = validate_node(cfg.search, PromptSearch, f"{key}.search")
        if search.max_steps < 0 or search.samples_per_step <= 0 or search.lr <= 0:
            raise ConfigError(
                f"{key}.search",
                "samples_per_step and lr must be positive, max_steps >= 0 (0 = no optimisation)",
            )
        if search.refresh_steps < 0:
            raise ConfigError(f"{key}.search.refresh_steps", "must be >= 0")
        return objective, search

    def extra_heads(self) -> int:
        return self.cfg.dream_classes if self.cfg.extra_heads is None else self.cfg.extra_heads

    # ----------------------------------------------------------------- setup
    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        if ctx.scenario.setting != "class-il":
            raise ConfigError(
                "scenario.setting",
                f"dream classes train over all heads; setting '{ctx.scenario.setting}' is not "
                "supported",
                "use scenario.setting=class-il (task-IL accuracy is reported as well)",
            )
        generator = load_generator(self.cfg.generator, "cpu", key="strategy.d2l.generator")
        if self.cfg.init in ("generator_class", "interpolation") and generator.n_classes < 2:
            raise ConfigError(
                "strategy.d2l.init",
                f"the {generator.backend} generator has {generator.n_classes} classes; "
                f"init={self.cfg.init} needs at least 2 to start prompts from",
                "use init=random, or give the generator class names",
            )
        if self.cfg.init == "seen_class" and generator.n_classes != ctx.scenario.n_classes:
            raise ConfigError(
                "strategy.d2l.init",
                f"seen_class needs the generator's classes to be the benchmark's "
                f"({generator.n_classes} vs {ctx.scenario.n_classes})",
                "give the diffusers backend the benchmark's class names "
                "(generator.options.class_names), or use init=generator_class / random",
            )
        if self.cfg.init == "seen_class":
            _check_class_names(generator, ctx.scenario.class_names)
        self._holder.generator = generator
        ctx.heads.release()
        log.info("d2l generator: %s", generator.describe())

    @property
    def generator(self) -> ConditionalGenerator:
        generator = self._holder.generator
        if generator is None:
            raise RuntimeError("d2l used before setup()")
        device = self.module.device
        if next(iter(generator.parameters())).device != device:
            generator.to(device)
        return generator

    @property
    def _input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.ctx.scenario.input_shape
        return (int(c), int(h), int(w))

    # ---------------------------------------------------------- head mapping
    def assign_heads(self, experience: Experience) -> None:
        heads = self.ctx.heads
        classes = list(experience.classes)
        if bool(heads.assigned[classes].all()):
            return
        dream_heads, _ = heads.bindings(OWNER)
        if experience.index == 0 or len(dream_heads) == 0:
            chosen, rule = heads.assign_in_order(classes), "in order"
        else:
            train = experience.train
            predictions = predict_heads(self.module, train.x, 1000)
            counts = heads.activation_counts(classes, train.y, predictions)
            counts, rule = self._reusable(counts, experience.index, len(classes))
            chosen = torch.as_tensor(greedy_assignment(counts), dtype=torch.long)
            heads.assign(classes, chosen.tolist())
        module = self.module
        task_heads = heads.task_mask([exp.classes for exp in self.ctx.scenario])
        module.task_heads.copy_(task_heads.to(module.task_heads.device))
        self._pool = None
        taken = sorted(set(chosen.tolist()) & set(dream_heads.tolist()))
        for dream in list(self.inventory):
            if dream.head in taken:
                self.inventory.retire(
                    dream.dream_id, "head taken by a real class", experience.index
                )
        log.info(
            "experience %d: classes %s -> heads %s (%s); %d dream heads re-used %s",
            experience.index + 1,
            classes,
            chosen.tolist(),
            rule,
            len(taken),
            taken,
        )

    def trained_dream_heads(self, experience: int) -> list[int]:
        """Heads of the dream classes that trained during at least one experience before
        ``experience``: dreamed after experience ``born``, a dream trains from ``born + 1`` on.

        Published [D2L reviews]: dreamed classes train together with the incoming and buffered
        images, and their embeddings initialise *later* real classes. A dream dreamed right
        before ``experience`` has an untrained head (its weights are the random init), so
        handing it to ``experience``'s classes would retire it before it ever trained.
        """
        return sorted(d.head for d in self.inventory if d.born + 1 < experience)

    def _reusable(
        self, counts: torch.Tensor, experience: int, n_classes: int
    ) -> tuple[torch.Tensor, str]:
        """Mask the most-activated count matrix to the heads ``experience``'s classes may take.

        Untrained dream heads are never offered while enough other heads are free (they keep
        their dream for one experience of training); with ``next_heads: most_activated_dream``
        the classes take trained dream heads only, when there are enough of them.
        """
        heads = self.ctx.heads
        dream_heads = set(heads.bindings(OWNER)[0].tolist())
        trained = self.trained_dream_heads(experience)
        available = counts >= 0
        if self.cfg.next_heads == "most_activated_dream" and len(trained) >= n_classes:
            keep = torch.zeros(heads.n_heads, dtype=torch.bool)
            keep[trained] = True
            return counts.masked_fill(~keep, -1), "most activated trained dream head"
        untrained = sorted(dream_heads - set(trained))
        if untrained:
            keep = available.any(0)
            keep[untrained] = False
            if int(keep.sum()) >= n_classes:
                return counts.masked_fill(~keep, -1), "most activated (untrained dreams kept)"
        return counts, "most activated"

    # -------------------------------------------------------------- dreaming
    def after_experience(self, experience: Experience) -> None:
        if experience.index + 1 >= self.ctx.scenario.n_experiences:
            log.info(  # no experience left to transfer to: no episode, a summary
                "d2l: %d dream episodes, %.1fs dreaming; %d dream classes retired by real ones",
                len(self.episodes),
                self.dream_seconds(),
                len(self.inventory.retired),
            )
            return
        start = time.perf_counter()
        record: dict[str, Any] = {"after_experience": experience.index + 1, "dreams": []}
        heads = self.ctx.heads
        alive_heads = {d.head for d in self.inventory}
        seen_heads = heads.label_to_head[heads.assigned]
        seen_protos, self._center = self._seen_prototypes()
        protos = self._dream_prototypes()
        if self.cfg.refresh and self.search.refresh_steps > 0:
            for dream in list(self.inventory):
                others = _stack([p for i, p in protos.items() if i != dream.dream_id])
                result = self._optimise(dream, seen_heads, seen_protos, others, refresh=True)
                dream.prompt, dream.refreshed = result.prompt.cpu(), dream.refreshed + 1
                protos[dream.dream_id] = self._prototype_of(dream)
                record["dreams"].append(self._record(dream, result, "refresh"))
        free = [h for h in heads.free_heads().tolist() if h not in alive_heads]
        gen = torch.Generator().manual_seed(
            (self.run_seed * 1_000_003 + _DREAM_SALT) * 10_007 + experience.index
        )
        while len(self.inventory) < self.cfg.dream_classes and free:
            head = free.pop(0)
            dream = self._new_dream(head, experience.index, gen)
            others = _stack(list(protos.values()))
            result = self._optimise(dream, seen_heads, seen_protos, others, refresh=False)
            dream.prompt, dream.steps, dream.stop = result.prompt.cpu(), result.steps, result.stop
            dream.stats = result.stats.as_dict() if result.stats is not None else {}
            self.inventory.add(dream)
            heads.bind(OWNER, [head], [dream.dream_id])
            protos[dream.dream_id] = self._prototype_of(dream)
            record["dreams"].append(self._record(dream, result, "new"))
        self._pool = None
        record["seconds"] = time.perf_counter() - start
        record["heads"] = heads.summary()
        self.episodes.append(record)
        log.info(
            "d2l episode after experience %d: %d dream classes (%s) in %.1fs",
            experience.index + 1,
            len(self.inventory),
            ", ".join(f"{d.dream_id}@head{d.head}:{d.stop}" for d in self.inventory),
            record["seconds"],
        )
        self._write_outputs(experience.index)

    def _new_dream(self, head: int, experience: int, gen: torch.Generator) -> DreamClass:
        generator = self.generator
        source: int | None = None
        if self.cfg.init != "random":
            pool = (
                self.ctx.heads.assigned.nonzero().squeeze(1).tolist()  # seen labels
                if self.cfg.init == "seen_class"
                else range(generator.n_classes)
            )
            used = {d.source_class for d in self.inventory}
            choices = [c for c in pool if c not in used] or list(pool)
            source = choices[int(torch.randint(len(choices), (1,), generator=gen))]
        prompt = generator.init_prompt(source, gen).cpu()
        if self.cfg.init == "interpolation":  # the paper's ablation: a mix of two known classes
            others = [c for c in range(generator.n_classes) if c != source]
            other = others[int(torch.randint(len(others), (1,), generator=gen))]
            prompt = 0.5 * (prompt + generator.init_prompt(other, gen).cpu())
        init_images = None
        if self.cfg.img2img and not self.buffer.is_empty:
            x = self.buffer.all(["x"])["x"]
            pick = int(torch.randint(len(x), (1,), generator=gen))
            init_images = x[pick : pick + 1].cpu().clone()
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        return DreamClass(
            dream_id=self.inventory.new_id(),
            prompt=prompt,
            seed=seed,
            head=head,
            source_class=source,
            born=experience,
            init_images=init_images,
        )

    def _optimise(
        self,
        dream: DreamClass,
        seen_heads: torch.Tensor,
        seen_protos: torch.Tensor,
        others: torch.Tensor,
        refresh: bool,
    ) -> Any:
        steps = self.search.refresh_steps if refresh else self.search.max_steps
        seed = dream.seed * 31 + 1_000 * (dream.refreshed + 1 if refresh else 0)
        return optimise_prompt(
            self.module,
            self.generator,
            dream.prompt,
            dream.head,
            seen_heads,
            seen_protos,
            others,
            self.oracle,
            self.objective,
            self.search,
            max_steps=steps,
            seed=seed,
            out_shape=self._input_shape,
            init_images=dream.init_images,
            center=self._center,
        )

    @staticmethod
    def _record(dream: DreamClass, result: Any, kind: str) -> dict[str, Any]:
        return {
            "kind": kind,
            "dream_id": dream.dream_id,
            "head": dream.head,
            "source_class": dream.source_class,
            "steps": result.steps,
            "stop": result.stop,
            "trace": result.trace,
        }

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        was = module.training
        module.eval()
        try:
            return classify(module, x.to(module.device))[1]
        finally:
            module.train(was)

    def _seen_prototypes(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Centred feature prototypes of the seen real classes (replay buffer) and the centre:
        the buffer's mean feature."""
        if self.buffer.is_empty:
            return torch.zeros(0), None
        data = self.buffer.all(["x", "y"])
        x, y = data["x"], data["y"].cpu()
        feats = torch.cat(
            [self._features(x[s : s + 500].float() / 255) for s in range(0, len(x), 500)]
        ).cpu()
        center = feats.mean(0)
        protos = [prototype(feats[y == h], center) for h in y.unique().tolist()]
        return torch.stack(protos), center

    def _prototype_of(self, dream: DreamClass) -> torch.Tensor:
        """Centred prototype of ``prototype_samples`` samples of a dream class."""
        images = self.inventory.regenerate(
            self.generator, dream, self.cfg.prototype_samples, dream.seed, self._input_shape
        )
        return prototype(self._features(images.float() / 255).cpu(), self._center)

    def _dream_prototypes(self) -> dict[int, torch.Tensor]:
        return {d.dream_id: self._prototype_of(d) for d in self.inventory}

    # -------------------------------------------------------------- training
    def pool(self, device: torch.device) -> _Pool:
        """This experience's dream samples (regenerated from the inventory, cached).

        Bindings change only in ``assign_heads`` and ``after_experience``, which drop the cache,
        so the per-step check needs no head-manager lookup."""
        index = self.module.experience_index
        key = (index, str(device))
        if self._pool is not None and self._pool.key == key:
            return self._pool
        bound, classes = self.ctx.heads.bindings(OWNER)
        xs, ys = [], []
        n = self.cfg.images_per_class
        with self.timed("dream pool"):  # once per experience, not per step
            for head, dream_id in zip(bound.tolist(), classes.tolist(), strict=True):
                dream = self.inventory.entries[dream_id]
                xs.append(
                    self.inventory.regenerate(
                        self.generator, dream, n, sample_seed(dream.seed, index), self._input_shape
                    )
                )
                ys.append(torch.full((n,), head, dtype=torch.long))
        c, h, w = self._input_shape
        x = torch.cat(xs) if xs else torch.zeros(0, c, h, w, dtype=torch.uint8)
        y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)
        self._pool = _Pool(key=key, x=x.to(device), heads=y.to(device))
        self._order.clear()
        return self._pool

    def indices(self, epoch: int, start: int, k: int, n: int) -> torch.Tensor:
        """Positions ``start..start+k-1`` of the epoch's dream-row order (exact on resume)."""
        return self._order.indices(self.run_seed, self.module.experience_index, epoch, start, k, n)

    def prepare_batch(self, batch: Batch) -> Batch:
        if len(self.inventory) == 0 or self.cfg.dream_ratio == 0:
            return batch
        pool = self.pool(batch.x_raw.device)
        n_pool = len(pool.heads)
        k = round(self.cfg.dream_ratio * batch.n_stream)
        if n_pool == 0 or k == 0:
            return batch
        runner = self.ctx.runner
        full = runner.trainer_cfg.batch_size if runner is not None else batch.n_stream
        module = self.module
        start = module.batches_done_in_epoch * round(self.cfg.dream_ratio * full)
        idx = self.indices(module.epoch_in_experience, start, k, n_pool).to(pool.x.device)
        x = module.transform.train(pool.x[idx])
        t = batch.t[:1].expand(k) if len(batch.t) else torch.zeros(k, dtype=torch.long)
        return batch.append(x, pool.heads[idx], t.to(x.device))

    # --------------------------------------------------------------- outputs
    def _output_dir(self) -> Path | None:
        runner = self.ctx.runner
        if runner is None or runner.output_dir is None or getattr(runner, "rank", 0) != 0:
            return None
        return Path(runner.output_dir) / "dreams"

    def dream_seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.episodes))

    def _write_outputs(self, experience: int) -> None:
        out = self._output_dir()
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "generator": self.generator.describe(),
            "config": asdict(self.cfg) if hasattr(self.cfg, "__dataclass_fields__") else {},
            "inventory": [
                {k: v for k, v in d.state().items() if k not in ("prompt", "init_images")}
                for d in self.inventory
            ],
            "retired": self.inventory.retired,
            "episodes": self.episodes,
            "dream_seconds": self.dream_seconds(),
        }
        (out / "d2l.json").write_text(json.dumps(summary, indent=1, default=str))
        if self.cfg.save_grid and len(self.inventory):
            from cl_framework.pretrain_generator import save_grid

            n = self.cfg.grid_per_class
            dreams = list(self.inventory)
            images = torch.cat(
                [
                    self.inventory.regenerate(self.generator, d, n, d.seed, self._input_shape)
                    for d in dreams
                ]
            )
            names = self.generator.describe().get("class_names") or []
            labels = [
                f"dream {d.dream_id} / head {d.head}"
                + (f" ({names[d.source_class]})" if d.source_class is not None and names else "")
                for d in dreams
            ]
            save_grid(images.float() / 255, n, out / f"experience_{experience + 1}.png", labels)

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        return {"inventory": self.inventory.state(), "episodes": json.dumps(self.episodes)}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        self.inventory.load_state(state.get("inventory") or {})
        self.episodes = json.loads(state.get("episodes") or "[]")
        self._pool = None
