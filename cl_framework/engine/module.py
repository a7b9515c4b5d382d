"""``CLModule``: the LightningModule that owns backbone + heads and calls the strategy plug-ins.

One training step (manual optimisation, so plug-ins may bring their own optimizers):

1. map dataset labels to heads, augment the stream rows on the device;
2. ``prepare_batch`` of each plug-in (append replay / auxiliary rows);
3. forward with the plug-ins' tap modifiers (taps recorded if a plug-in needs them);
4. the base cross-entropy (masked by ``logit_mask`` hooks and, in task-IL, by task; left out
   when a plug-in ``replaces_ce``) plus every plug-in's named ``loss_terms``;
5. a finiteness check of the loss (every ``check_finite_every_n_steps``; before backward, so a
   NaN never reaches the weights), backward, ``before_optimizer_step`` hooks, step every
   optimizer;
6. offer the stream rows (+ plug-ins' ``buffer_fields``) to the shared buffer once (unless a
   plug-in fills the buffer itself: ``fills_buffer``);
7. ``after_train_step`` hooks (which may take further optimizer steps with
   :meth:`CLModule.extra_step`: FDR, MER), then the runner's step hook (periodic checkpoints,
   interrupts).

A run whose plug-in does not train on the stream (``trains_on_stream = False``: GDumb) skips
steps 2-5 and 7's hooks: its stream steps only offer rows to the buffer.

Optimizers and schedulers are built once per experience (``begin_experience``) and reused by
every per-epoch fit of that experience, so a run can resume in the middle of an experience.

Loss values are kept as tensors and read on the host only every ``log_every_n_steps`` steps, so
the hot path has no per-step device synchronisation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.backbones.taps import Backbone, TapContext, TapModifier
from cl_framework.buffer import ReplayBuffer
from cl_framework.engine.checkpoint import load_scheduler_state, scheduler_state
from cl_framework.engine.distributed import gather_rows
from cl_framework.engine.heads import HeadManager
from cl_framework.engine.optim import OptimizerConfig, build_optimizer, build_scheduler
from cl_framework.engine.plugin import (
    HOOKS,
    LOGITS_TAP,
    ROLE_EVAL,
    ROLE_REPLAY,
    ROLE_STREAM,
    Batch,
    ForwardOutput,
    StrategyPlugin,
)
from cl_framework.engine.timing import PhaseClock
from cl_framework.errors import NonFiniteLossError
from cl_framework.scenarios.transforms import BatchTransform


@dataclass
class StepLog:
    """Loss tensors of recent steps, converted to floats only when logged."""

    every_n_steps: int = 50
    pending: dict[str, torch.Tensor] = field(default_factory=dict)


def _chain(first: TapModifier, second: TapModifier) -> TapModifier:
    return lambda t: second(first(t))


def sum_of_terms(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The step's objective: the scalar loss terms added in order (``a + b + c``; fewer ops
    than stacking them, the same gradient). A term with more than one element is an error."""
    total: torch.Tensor | None = None
    for value in losses.values():
        term = value if value.dim() == 0 else value.reshape(())
        total = term if total is None else total + term
    assert total is not None
    return total


def rows_independent(network: nn.Module) -> bool:
    """Whether each row's output depends on that row only, so that forwarding rows together
    or apart gives the same result: no batch-statistics normalisation (BatchNorm and kin), and
    no dropout (its random masks would be drawn in a different order)."""
    batch_coupled = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)
    return not any(isinstance(m, batch_coupled) for m in network.modules())


class CLModule(pl.LightningModule):
    """Backbone + output heads + strategy plug-ins; trained one experience per Lightning fit."""

    def __init__(
        self,
        backbone: Backbone,
        heads: HeadManager,
        plugins: list[StrategyPlugin],
        optimizer: OptimizerConfig,
        transform: BatchTransform,
        task_heads: torch.Tensor,
        setting: str = "class-il",
        buffer: ReplayBuffer | None = None,
        log_every_n_steps: int = 50,
        gradient_clip_val: float | None = None,
        check_finite_every_n_steps: int = 1,
        replicate_buffer: bool = False,
        fuse_forward: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.backbone = backbone
        self.heads = heads
        self.head = nn.Linear(backbone.feature_dim, heads.n_heads)
        backbone.init_head(self.head)
        self.plugins = nn.ModuleList(plugins)
        self.optimizer_config = optimizer
        self.transform = transform
        self.setting = setting
        self.buffer = buffer
        self.gradient_clip_val = gradient_clip_val
        self.register_buffer("task_heads", task_heads.clone(), persistent=False)
        self._hooks: dict[str, list[StrategyPlugin]] = {
            hook: [p for p in plugins if p.overrides(hook)] for hook in HOOKS
        }
        self.uses_buffer = buffer is not None and any(p.uses_buffer for p in plugins)
        # a plug-in that fills the buffer itself (episodic memory, herding) takes over insertion
        self.offers_stream_rows = self.uses_buffer and not any(p.fills_buffer for p in plugins)
        self.base_ce = not any(p.replaces_ce for p in plugins)
        # GDumb learns from the buffer only: the stream steps just offer their rows to it
        self.trains_on_stream = all(p.trains_on_stream for p in plugins)
        self.records_taps = any(p.needs_taps for p in plugins)
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self.replicate_buffer = replicate_buffer
        self.experience_index = 0
        self.in_experience = False  # before_experience done, evaluation not yet
        self.epoch_in_experience = 0
        self.batches_done_in_epoch = 0
        self.step_count = 0
        self.step_log = StepLog(every_n_steps=max(1, log_every_n_steps))
        self.last_losses: dict[str, float] = {}
        self.step_hook: Callable[[CLModule], None] | None = None
        self.phase_clock: PhaseClock | None = None  # set by the runner: plug-in hook times
        self._optimizers: list[torch.optim.Optimizer] | None = None
        self._direct_step = False
        self._schedulers: list[Any] = []
        self.fuse_forward = fuse_forward
        self._fuse_sides: bool | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies (``copy.deepcopy`` for candidates, teachers) never carry the runner's hook."""
        state = dict(super().__getstate__())
        state["step_hook"] = None
        state["phase_clock"] = None
        return state

    def clone(self) -> CLModule:
        """An independent copy for candidate training (WSCL) or teachers.

        Parameters, optimizers-to-be, head mapping, transform generators, plug-in state and the
        replay buffer are copied; the copy's plug-ins are bound to the copy (their context
        points at the copied module, heads and buffer). The scenario and the runner are shared:
        they are large and not modified by training.
        """
        memo: dict[int, Any] = {}
        for plugin in self.plugins:
            ctx = plugin._ctx
            if ctx is not None:
                memo[id(ctx.scenario)] = ctx.scenario
                if ctx.runner is not None:
                    memo[id(ctx.runner)] = ctx.runner
        return copy.deepcopy(self, memo)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, taps: TapContext | None = None) -> torch.Tensor:
        """Logits over all heads for a float input batch."""
        return self.head(self.backbone(x, taps))

    def hooks(self, name: str) -> list[StrategyPlugin]:
        """The plug-ins that implement hook ``name``, in strategy order."""
        return self._hooks[name]

    def run_forward(self, x: torch.Tensor, role: str = ROLE_STREAM) -> ForwardOutput:
        """Forward a float batch with the plug-ins' tap modifiers; records taps when needed."""
        modifiers: dict[str, TapModifier] = {}
        for plugin in self._hooks["tap_modifiers"]:
            for name, fn in (plugin.tap_modifiers(x, role) or {}).items():
                modifiers[name] = _chain(modifiers[name], fn) if name in modifiers else fn
        on_logits = modifiers.pop(LOGITS_TAP, None)
        record = self.records_taps and role != ROLE_EVAL
        ctx = TapContext(record=record, modifiers=modifiers) if (record or modifiers) else None
        features = self.backbone(x, ctx)
        logits = self.head(features)
        if on_logits is not None:
            logits = on_logits(logits)
        return ForwardOutput(logits=logits, features=features, taps=ctx.records if ctx else {})

    @property
    def fuses_side_forwards(self) -> bool:
        """Whether side rows go through the stream forward (exact: rows do not interact)."""
        if self._fuse_sides is None:
            self._fuse_sides = (
                self.fuse_forward
                and rows_independent(self.backbone)
                and not self._hooks["tap_modifiers"]
                and not self.records_taps
            )
        return self._fuse_sides

    def forward_step(self, step: Batch) -> ForwardOutput:
        """The step's forward: stream rows, plus the plug-ins' side rows (``Batch.sides``) in
        the same pass when that is exact, else one pass per side (role ``replay``)."""
        if not step.sides:
            return self.run_forward(step.x, ROLE_STREAM)
        if not self.fuses_side_forwards:
            out = self.run_forward(step.x, ROLE_STREAM)
            out.sides = {n: self.run_forward(s.x, ROLE_REPLAY) for n, s in step.sides.items()}
            return out
        parts = [step.x, *(s.x for s in step.sides.values())]
        sizes = [len(p) for p in parts]
        full = self.run_forward(torch.cat(parts), ROLE_STREAM)
        logits, features = full.logits.split(sizes), full.features.split(sizes)
        sides = {
            name: ForwardOutput(logits=lo, features=fe)
            for name, lo, fe in zip(step.sides, logits[1:], features[1:], strict=True)
        }
        return ForwardOutput(logits=logits[0], features=features[0], sides=sides)

    def replay_forward(self, x_raw: torch.Tensor) -> ForwardOutput:
        """Augment raw buffer rows and forward them (role ``replay``)."""
        return self.run_forward(self.transform.train(x_raw), ROLE_REPLAY)

    @torch.inference_mode()
    def predict_logits(self, x_raw: torch.Tensor, experience: int | None = None) -> torch.Tensor:
        """Eval-mode scores of raw uint8 inputs (caller sets ``eval()``) of ``experience`` (if
        known): the forward of an ``eval_forward`` hook (PNN's column) or the engine's, then
        what the plug-ins' ``eval_logits`` hooks make of them (iCaRL's NME classifier)."""
        x = self.transform.to_float(x_raw)
        out = None
        for plugin in self._hooks["eval_forward"]:
            out = plugin.eval_forward(x, experience)
            if out is not None:
                break
        if out is None:
            out = self.run_forward(x, ROLE_EVAL)
        logits = out.logits
        for plugin in self._hooks["eval_logits"]:
            logits = plugin.eval_logits(out, logits)
        return logits

    # ------------------------------------------------------------------- loss
    def classification_loss(self, batch: Batch, out: ForwardOutput) -> torch.Tensor:
        """Cross-entropy over every row of the batch, with task-IL and plug-in logit masks."""
        logits = out.logits
        mask: torch.Tensor | None = None
        if self.setting == "task-il":
            mask = self.task_heads[batch.t]
        for plugin in self._hooks["logit_mask"]:
            extra = plugin.logit_mask(batch)
            if extra is not None:
                mask = extra if mask is None else mask & extra
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, batch.y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One optimizer step per mini-batch; a list is a chunk of mini-batches (the loader's
        ``steps_per_batch``), each its own step, so Lightning's per-batch overhead is shared."""
        if isinstance(batch, list):
            for sub in batch:
                total = self._train_one(sub)
            return total
        return self._train_one(batch)

    def step_batch(self, batch: Mapping[str, torch.Tensor]) -> Batch:
        """The loader's rows as a :class:`Batch`: labels mapped to heads, rows augmented.

        A batch of a split with foreign rows (``"h"``: auxiliary / dream images with a fixed
        head) is reordered so that the experience's own rows come first: they are the batch's
        stream rows (``n_stream``, offered to the buffer), the foreign rows follow as appended
        rows. Every row is augmented together, as one batch of the reference codes' union.
        """
        x_raw, y, t = batch["x"], batch["y"], batch["t"]
        foreign = batch.get("h")
        if foreign is None:
            y = self.heads.map(y)
            return Batch(x=self.transform.train(x_raw), y=y, t=t, x_raw=x_raw, n_stream=len(y))
        own = foreign < 0
        order = torch.argsort((~own).to(torch.uint8), stable=True)
        n = int(own.sum())
        heads = torch.where(own, self.heads.map(y.clamp_min(0)), foreign)[order]
        x_all = x_raw[order]
        return Batch(
            x=self.transform.train(x_all), y=heads, t=t[order], x_raw=x_all[:n], n_stream=n
        )

    def _train_one(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        step = self.step_batch(batch)
        if not self.trains_on_stream:
            return self._offer_only(step)
        for plugin in self._hooks["prepare_batch"]:
            step = plugin.prepare_batch(step)
        out = self.forward_step(step)
        losses: dict[str, torch.Tensor] = {}
        if self.base_ce:
            losses["ce"] = self.classification_loss(step, out)
        for plugin in self._hooks["loss_terms"]:
            for name, value in plugin.loss_terms(step, out).items():
                if name in losses:
                    raise RuntimeError(f"loss term '{name}' of '{plugin.name}' is already defined")
                losses[name] = value
        if not losses:
            raise RuntimeError("no loss term: a plug-in with replaces_ce returned none")
        total = sum_of_terms(losses)
        every = self.check_finite_every_n_steps
        if every > 0 and self.step_count % every == 0 and not math.isfinite(total.item()):
            raise NonFiniteLossError(
                step=self.step_count,
                experience=self.experience_index,
                terms={k: float(v.detach()) for k, v in losses.items()},
            )

        self._backward_and_step(total, surgery=True)

        if self.offers_stream_rows:
            fields = {"x": step.x_raw, "y": step.y, "t": step.t}
            for plugin in self._hooks["buffer_fields"]:
                fields.update(plugin.buffer_fields(step, out))
            self._offer_rows(fields, step.n_stream)
        for plugin in self._hooks["after_train_step"]:
            plugin.after_train_step(step, out)
        return self._end_step(total, losses)

    def _offer_rows(self, fields: dict[str, torch.Tensor], n: int) -> None:
        # the buffer detaches what needs it; slice only batches with appended (foreign) rows
        rows = {k: v if len(v) == n else v[:n] for k, v in fields.items()}
        if self.replicate_buffer:  # DDP: every rank inserts the whole global batch
            rows = {k: gather_rows(v.detach()) for k, v in rows.items()}
        self.buffer.add(**rows)

    def _offer_only(self, step: Batch) -> torch.Tensor:
        """A step of a run that does not train on the stream (``trains_on_stream``): no
        forward, no optimizer step, no plug-in step hooks; the stream rows go to the buffer."""
        if self.offers_stream_rows:
            self._offer_rows({"x": step.x_raw, "y": step.y, "t": step.t}, step.n_stream)
        zero = torch.zeros((), device=step.x.device)
        return self._end_step(zero, {})

    def _end_step(self, total: torch.Tensor, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        self.step_count += 1
        self.batches_done_in_epoch += 1
        self._record_losses(total, losses)
        if self.step_hook is not None:
            self.step_hook(self)
        return total.detach()

    def _backward_and_step(self, loss: torch.Tensor, surgery: bool, zero: bool = True) -> None:
        direct = self._direct_step
        # single device, fp32: Lightning's backward/step wrappers only dispatch hooks that
        # CLModule does not use; call torch directly (about 100 us less per step on CPU)
        optimizers = self._optimizers if direct else self._optimizer_list()
        if zero:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        if direct:
            loss.backward()
        else:
            self.manual_backward(loss)
        if surgery:
            for plugin in self._hooks["before_optimizer_step"]:
                plugin.before_optimizer_step()
        if self.gradient_clip_val is not None:
            for opt in optimizers:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val)
        for opt in optimizers:
            opt.step()

    def extra_step(self, loss: torch.Tensor, accumulate: bool = False) -> None:
        """One more optimizer step inside the current training step.

        For strategies whose update is several optimizer steps per mini-batch (FDR's
        function-distance step after the task step, MER's inner Reptile steps); call it from
        ``after_train_step``. It goes through the same optimizers, gradient clipping and
        precision plug-in as the main step, but not through ``before_optimizer_step`` (the
        gradient surgery of the main objective) and it records no loss terms. The step uses
        the gradient of ``loss`` alone, or with ``accumulate`` that gradient added to the ones
        the previous step left in ``.grad`` (HAL: the task gradient plus the anchor term's).
        """
        self._backward_and_step(loss, surgery=False, zero=not accumulate)

    def on_train_start(self) -> None:
        from pytorch_lightning.strategies import SingleDeviceStrategy

        trainer = self.trainer
        self._direct_step = (
            type(trainer.strategy) is SingleDeviceStrategy
            and str(trainer.precision) in ("32-true", "32")
            and self._optimizers is not None
        )

    def on_train_end(self) -> None:
        self._direct_step = False

    def _record_losses(self, total: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        if self.step_count % self.step_log.every_n_steps:
            return
        values = {f"train/loss_{k}": float(v.detach()) for k, v in losses.items()}
        values["train/loss"] = float(total.detach())
        self.last_losses = values
        if self.trainer is not None and self.trainer.loggers:
            values = {**values, "experience": float(self.experience_index + 1)}  # 1-based
            for logger in self.trainer.loggers:
                logger.log_metrics(values, step=self.step_count)

    # ------------------------------------------------------------- optimizers
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Backbone + heads + what plug-ins add to the main optimizer (trainable only)."""
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        for plugin in self._hooks["main_parameters"]:
            params.extend(plugin.main_parameters())
        seen: set[int] = set()
        unique = []
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        return unique

    def begin_experience(self, index: int) -> None:
        """Fresh optimizers and schedulers for an experience (reused by its epoch fits)."""
        self.experience_index = index
        self.epoch_in_experience = 0
        self.batches_done_in_epoch = 0
        main = build_optimizer(self.optimizer_config, self.trainable_parameters())
        scheduler = build_scheduler(self.optimizer_config, main)
        self._schedulers = [scheduler] if scheduler is not None else []
        extra: list[torch.optim.Optimizer] = []
        for plugin in self._hooks["configure_optimizers"]:
            extra.extend(plugin.configure_optimizers())
        self._optimizers = [main, *extra]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The experience's optimizers (built by ``begin_experience``), shared across fits."""
        if self._optimizers is None:
            self.begin_experience(self.experience_index)
        assert self._optimizers is not None
        return self._optimizers

    def end_epoch(self) -> None:
        """Step the epoch schedulers and advance the position (called by the runner)."""
        for scheduler in self._schedulers:
            scheduler.step()
        self.epoch_in_experience += 1
        self.batches_done_in_epoch = 0

    def _optimizer_list(self) -> list[Any]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, list) else [opts]

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue training exactly (tensors / primitives only)."""
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.state_dict().items()},
            "heads": self.heads.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "transform": self.transform.state_dict(),
            "plugins": [{"name": p.name, "state": p.plugin_state()} for p in self.plugins],
            "optimizers": [o.state_dict() for o in self._optimizers or []],
            "schedulers": [scheduler_state(s) for s in self._schedulers],
            "position": {
                "experience": self.experience_index,
                "in_experience": self.in_experience,
                "epoch": self.epoch_in_experience,
                "batch": self.batches_done_in_epoch,
                "step": self.step_count,
            },
        }

    def load_training_state(self, state: dict[str, Any], with_optimizers: bool) -> None:
        """Restore :meth:`training_state` (optimizers only for a mid-experience resume)."""
        self.load_state_dict(state["model"])
        self.heads.load_state_dict(state["heads"])
        if self.buffer is not None and state["buffer"] is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.transform.load_state_dict(state["transform"])
        names = [p.name for p in self.plugins]
        saved = [p["name"] for p in state["plugins"]]
        if names != saved:
            raise ValueError(f"checkpoint has strategies {saved}, this run has {names}")
        for plugin, entry in zip(self.plugins, state["plugins"], strict=True):
            plugin.load_plugin_state(entry["state"])
        pos = state["position"]
        self.experience_index = int(pos["experience"])
        self.in_experience = bool(pos["in_experience"])
        self.epoch_in_experience = int(pos["epoch"])
        self.batches_done_in_epoch = int(pos["batch"])
        self.step_count = int(pos["step"])
        if with_optimizers:
            epoch, batch = self.epoch_in_experience, self.batches_done_in_epoch
            self.begin_experience(self.experience_index)
            self.epoch_in_experience, self.batches_done_in_epoch = epoch, batch
            assert self._optimizers is not None
            for opt, opt_state in zip(self._optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(opt_state)
            for sched, sched_state in zip(self._schedulers, state["schedulers"], strict=True):
                load_scheduler_state(sched, sched_state)

    # --------------------------------------------------------------- plug-ins
    def _hook_phase(self, plugin: StrategyPlugin, hook: str) -> AbstractContextManager[None]:
        """The hook call's phase in ``timings.json`` while the runner's clock is attached."""
        clock = self.phase_clock
        return nullcontext() if clock is None else clock.phase(f"{plugin.name}.{hook}")

    def call_plugins(self, hook: str, *args: Any) -> None:
        """Call a void hook on every plug-in that implements it."""
        for plugin in self._hooks[hook]:
            with self._hook_phase(plugin, hook):
                getattr(plugin, hook)(*args)

    def fold_plugins(self, hook: str, value: Any, *args: Any) -> Any:
        """Thread ``value`` through every plug-in implementing ``hook`` (hook(*args, value))."""
        for plugin in self._hooks[hook]:
            with self._hook_phase(plugin, hook):
                value = getattr(plugin, hook)(*args, value)
        return value
