"""The strategy plug-in protocol: the hooks ``CLModule`` and ``ContinualRunner`` call.

A strategy is a subclass of :class:`StrategyPlugin` that overrides only the hooks it needs.
The engine looks up once which hooks a plug-in overrides and calls only those, so an unused
hook costs nothing per step. Several plug-ins compose: they are called in the order of the
``strategy`` config list, their loss terms are summed, their batch edits chain.

Why not Lightning callbacks: callbacks run before the module and cannot change the loss
(see ``shared/reference/frameworks.md`` E3); continual-learning strategies are essential logic.

Plug-ins are ``nn.Module``s so that their parameters and tensors (EWC's Fisher, LwF's old model,
TwF's attention modules) move to the training device with the model and are part of its
``state_dict``. Non-tensor state goes through :meth:`StrategyPlugin.plugin_state`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from cl_framework.backbones.taps import TapModifier
    from cl_framework.buffer import ReplayBuffer
    from cl_framework.engine.heads import HeadManager
    from cl_framework.engine.module import CLModule
    from cl_framework.engine.runner import ContinualRunner
    from cl_framework.scenarios import Experience, Scenario, Split

#: Names of every hook a plug-in may override; the engine dispatches only overridden ones.
HOOKS: tuple[str, ...] = (
    "assign_heads",
    "before_experience",
    "train_data",
    "after_experience",
    "on_epoch_start",
    "on_epoch_end",
    "prepare_batch",
    "tap_modifiers",
    "logit_mask",
    "loss_terms",
    "before_optimizer_step",
    "buffer_fields",
    "after_train_step",
    "configure_optimizers",
    "main_parameters",
    "eval_logits",
    "eval_forward",
)

#: Forward roles passed to :meth:`StrategyPlugin.tap_modifiers`.
ROLE_STREAM = "stream"
ROLE_REPLAY = "replay"
ROLE_EVAL = "eval"

#: Name under which ``tap_modifiers`` may also modify the head's output (the logits).
LOGITS_TAP = "logits"


@dataclass
class SideRows:
    """Rows a plug-in forwards with the step's batch but scores with its own loss term only
    (not the stream cross-entropy), e.g. DER's replay draw and its stored logits.

    The engine forwards them in the same pass as the stream rows when that is exact (a
    backbone without batch statistics or dropout, no plug-in tap hooks), otherwise in a
    separate pass with role ``replay``; either way :attr:`ForwardOutput.sides` holds their
    output under the same name.
    """

    x: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Batch:
    """One training step's data, on the training device.

    The first ``n_stream`` rows of ``x``/``y``/``t`` are the current experience's stream samples;
    plug-ins may append further rows (replay, auxiliary data) with :meth:`append`. Only stream
    rows enter the replay buffer. ``y`` holds head indices (dataset labels mapped by the head
    manager), ``x_raw`` the stream rows before augmentation (what the buffer stores).
    """

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    x_raw: torch.Tensor
    n_stream: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    sides: dict[str, SideRows] = field(default_factory=dict)

    def with_side(self, name: str, x: torch.Tensor, **targets: torch.Tensor) -> Batch:
        """A new batch that also forwards ``x`` as side rows ``name`` (see :class:`SideRows`)."""
        if name in self.sides:
            raise RuntimeError(f"side rows '{name}' are already attached to this batch")
        return dataclasses.replace(self, sides={**self.sides, name: SideRows(x, dict(targets))})

    def append(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> Batch:
        """A new batch with rows added after the existing ones (stream rows stay first)."""
        return dataclasses.replace(
            self,
            x=torch.cat([self.x, x]),
            y=torch.cat([self.y, y]),
            t=torch.cat([self.t, t]),
        )


@dataclass
class ForwardOutput:
    """What a forward pass of the model produced: logits, pooled features and recorded taps."""

    logits: torch.Tensor
    features: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    sides: dict[str, ForwardOutput] = field(default_factory=dict)  # per Batch.sides name


@dataclass
class StrategyContext:
    """The long-lived objects of a run that a plug-in may use (handed over in ``setup``)."""

    module: CLModule
    scenario: Scenario
    heads: HeadManager
    buffer: ReplayBuffer | None
    runner: ContinualRunner | None = None


class StrategyPlugin(nn.Module):
    """Base class of all strategies. Override hooks; do not call ``super()`` in them.

    Class attributes a plug-in sets:

    * ``name``: registry name (``strategy=[<name>]``).
    * ``Config``: a dataclass of its hyper-parameters (the ``strategy.<name>`` config node is
      validated against it before training).
    * ``uses_buffer``: the run needs the shared replay buffer (``buffer.size`` must be > 0).
    * ``needs_taps``: the model must record feature taps on training forwards.
    * ``needs_in_memory_data``: the plug-in works on whole training tensors (not batch by batch),
      so it cannot run on a source streamed from disk (``scenario.storage``); such a run is
      refused before training.
    * ``fills_buffer``: the plug-in decides itself which rows enter the shared buffer (an
      episodic memory filled at experience end, herding, greedy class balance), so the engine
      does not offer the stream rows to it after each step.
    * ``replaces_ce``: the plug-in's ``loss_terms`` carry the classification objective (iCaRL's
      binary cross-entropy with distillation targets), so the engine adds no ``ce`` term.
    * ``trains_on_stream``: False for a plug-in that learns from the buffer only (GDumb): the
      engine's stream steps then only offer their rows to the buffer (no forward, no optimizer
      step, no step-level hooks) and the plug-in trains in ``after_experience``.
    """

    name: ClassVar[str] = ""
    uses_buffer: ClassVar[bool] = False
    needs_taps: ClassVar[bool] = False
    needs_in_memory_data: ClassVar[bool] = False
    fills_buffer: ClassVar[bool] = False
    replaces_ce: ClassVar[bool] = False
    trains_on_stream: ClassVar[bool] = True

    @dataclass
    class Config:
        """No hyper-parameters."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self._ctx: StrategyContext | None = None

    # ----------------------------------------------------------------- wiring
    def setup(self, ctx: StrategyContext) -> None:
        """Called once when the run's objects exist, before any training or evaluation."""
        self._ctx = ctx

    @property
    def ctx(self) -> StrategyContext:
        if self._ctx is None:
            raise RuntimeError(f"strategy '{self.name}' used before setup()")
        return self._ctx

    @property
    def module(self) -> CLModule:
        return self.ctx.module

    def timed(self, name: str) -> AbstractContextManager[None]:
        """Time a block as its own phase ``<plug-in>.<name>`` of ``timings.json`` (e.g. making
        dreams inside a training step), so profiles do not take it for per-step work; a no-op
        outside a run (a candidate copy, a unit test)."""
        clock = self._ctx.module.phase_clock if self._ctx is not None else None
        return clock.phase(f"{self.name}.{name}") if clock is not None else nullcontext()

    @property
    def run_seed(self) -> int:
        """The run's seed (0 outside a run), to derive this plug-in's own generators from."""
        runner = self.ctx.runner
        return int(runner.seed) if runner is not None else 0

    @property
    def buffer(self) -> ReplayBuffer:
        buffer = self.ctx.buffer
        if buffer is None:
            raise RuntimeError(f"strategy '{self.name}' needs the replay buffer (uses_buffer)")
        return buffer

    def overrides(self, hook: str) -> bool:
        """Whether this plug-in implements ``hook`` (the engine skips hooks it does not)."""
        return getattr(type(self), hook) is not getattr(StrategyPlugin, hook)

    def extra_heads(self) -> int:
        """Output units this plug-in needs beyond one per benchmark class (auxiliary, dream)."""
        return 0

    # ------------------------------------------------------ runner-level hooks
    def assign_heads(self, experience: Experience) -> None:
        """Bind ``experience``'s classes to heads (head manager) before it is first evaluated.

        Called for experience 0 before the random-init evaluation, and for experience i+1
        right after experience i is trained, before the evaluation that fills row i; so
        ``acc[i][i+1]`` (and FWT) is measured with the mapping the experience will train with.
        """

    def before_experience(self, experience: Experience) -> None:
        """Before the fit of ``experience`` (outside Lightning): re-map heads, train candidates."""

    def train_data(self, experience: Experience, split: Split) -> Split:
        """The training data of ``experience``; return a different split to change it (joint)."""
        return split

    def after_experience(self, experience: Experience) -> None:
        """After the fit of ``experience`` and before its evaluation: consolidate, sleep, dream."""

    # --------------------------------------------------------- fit-level hooks
    def on_epoch_start(self, epoch: int) -> None:
        """At the start of each training epoch of the current experience."""

    def on_epoch_end(self, epoch: int) -> None:
        """At the end of each training epoch of the current experience."""

    # -------------------------------------------------------- step-level hooks
    def prepare_batch(self, batch: Batch) -> Batch:
        """Edit the training batch before the forward pass (e.g. append replay rows)."""
        return batch

    def tap_modifiers(self, x: torch.Tensor, role: str) -> Mapping[str, TapModifier] | None:
        """Replacements of feature-tap outputs for a forward of ``x`` (role: stream/replay/eval);
        the name ``LOGITS_TAP`` modifies the head's output (PNN's lateral into the logits)."""
        return None

    def logit_mask(self, batch: Batch) -> torch.Tensor | None:
        """Boolean mask over heads, (n_heads,) or (rows, n_heads), applied to the base CE."""
        return None

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        """Named loss terms added to the objective (names must be unique across plug-ins)."""
        return {}

    def before_optimizer_step(self) -> None:
        """After backward, before the optimizers step: gradient surgery (A-GEM, clipping)."""

    def buffer_fields(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        """Extra per-row fields stored with the stream rows offered to the buffer (e.g. logits)."""
        return {}

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        """After the optimizer step and the buffer update."""

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Extra optimizers (own parameter groups) stepped with the main one every step."""
        return []

    def main_parameters(self) -> Iterable[nn.Parameter]:
        """Extra parameters trained by the main optimizer together with backbone and heads."""
        return []

    def eval_logits(self, out: ForwardOutput, logits: torch.Tensor) -> torch.Tensor:
        """The scores evaluation takes the argmax of, given the eval forward ``out`` and the
        scores so far (the head's logits, or a previous plug-in's): an evaluation-time
        classifier such as iCaRL's nearest mean of exemplars returns its own scores here."""
        return logits

    def eval_forward(self, x: torch.Tensor, experience: int | None) -> ForwardOutput | None:
        """An evaluation forward of the plug-in's own for test rows ``x`` (float, eval mode)
        of experience ``experience`` (None when unknown), or None for the engine's: PNN picks
        the experience's column. The first plug-in that returns an output wins."""
        return None

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        """Non-tensor state for checkpoints (primitive types only); tensors go in buffers."""
        return {}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`plugin_state` returned."""
