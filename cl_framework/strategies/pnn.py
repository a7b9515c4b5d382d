"""Progressive Neural Networks (PNN; Rusu et al., 2016), on the MNIST MLP, as Mammoth's ``pnn``
(DER paper, Table 2) designs it: task-IL only.

* One column per experience. At experience ``k >= 1``'s start, the trained network becomes the
  frozen column ``k - 1`` and the engine's backbone and head are re-initialised (xavier, as a
  new ``MNISTMLP_PNN``) as column ``k``.
* Lateral connections (``lateral: true``): column ``k``'s layer ``l >= 2`` pre-activation gets
  ``U(alpha * [h_{l-1} of columns 0..k-1])``, its logits ``U(alpha * [h_L of columns 0..k-1])``,
  with ``U`` = Linear -> ReLU -> Linear (no bias) and ``alpha`` a learned per-unit scale
  (initialised uniform in [0, 0.1)), Mammoth's ``AlphaModule`` + adaptor. The old columns'
  activations include their own laterals (the paper's recursion). The current column gets its
  laterals through the ``fc*`` and ``LOGITS_TAP`` tap modifiers.
* Evaluation (``eval_forward``): the test rows of experience ``j`` go through column ``j``
  (the task identity picks the column, hence task-IL only); experiences not yet trained use
  the newest column.

Finding in the official code, kept as an option: Mammoth's 2020 ``MNISTMLP_PNN`` sets
``self.old_cols = []`` and never stores the old columns it is given, so its forward never takes
the lateral branch: the DER paper's PNN rows come from one independent MLP per task.
``lateral: false`` reproduces that.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.backbones.mlp import MLP
from cl_framework.engine.plugin import LOGITS_TAP, ForwardOutput, StrategyContext, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience
from cl_framework.strategies.registry import register_strategy

#: Mixed with the run seed and the experience index for a new column's initialisation.
_COLUMN_SALT = 5_501


class Lateral(nn.Module):
    """``U(alpha * h)``: the old columns' concatenated activations into one layer of a column."""

    def __init__(self, n_in: int, n_out: int, hidden: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(1, n_in) * 0.1)
        self.down = nn.Linear(n_in, hidden)
        self.up = nn.Linear(hidden, n_out, bias=False)
        for layer in (self.down, self.up):
            nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(h * self.alpha)))


class Column(nn.Module):
    """A column: an MLP, its head and (from the second column on) its laterals."""

    def __init__(self, backbone: MLP, head: nn.Linear, laterals: nn.ModuleList) -> None:
        super().__init__()
        self.backbone, self.head, self.laterals = backbone, head, laterals


def column_outputs(
    columns: list[Column], x: torch.Tensor
) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """For each column in order: its hidden activations (after ReLU) and its logits, with the
    laterals from the columns before it."""
    results: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    flat = x.flatten(1)
    for c, col in enumerate(columns):
        hidden: list[torch.Tensor] = []
        h = flat
        for layer_index, layer in enumerate(col.backbone.layers):
            z = layer(h)
            if len(col.laterals) and layer_index >= 1:
                old = torch.cat([results[i][0][layer_index - 1] for i in range(c)], 1)
                z = z + col.laterals[layer_index - 1](old)
            h = F.relu(z)
            hidden.append(h)
        logits = col.head(h)
        if len(col.laterals):
            logits = logits + col.laterals[-1](torch.cat([results[i][0][-1] for i in range(c)], 1))
        results.append((hidden, logits))
    return results


@register_strategy
class PNN(StrategyPlugin):
    name = "pnn"

    @dataclass
    class Config:
        lateral: bool = True  # false = independent columns (what Mammoth's 2020 code runs)
        adapter_hidden: int = 100  # hidden units of each lateral adapter (Mammoth: 100)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.adapter_hidden < 1:
            raise ConfigError(
                "strategy.pnn.adapter_hidden", "must be >= 1", "set adapter_hidden: 100"
            )
        # frozen columns and the current laterals change shape between experiences: kept out
        # of the registered sub-modules (the checkpoint carries them in plugin_state)
        object.__setattr__(self, "frozen", [])
        object.__setattr__(self, "laterals", nn.ModuleList())

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        backbone = ctx.module.backbone
        if not isinstance(backbone, MLP):
            raise ConfigError(
                "backbone",
                f"strategy 'pnn' grows columns of the MLP, got {type(backbone).__name__}",
                "use backbone=mlp",
            )
        if ctx.scenario.setting != "task-il":
            raise ConfigError(
                "scenario.setting",
                f"'{ctx.scenario.setting}': PNN picks a column by the test sample's task",
                "use scenario.setting=task-il (PNN has task-IL results only)",
            )

    # ------------------------------------------------------------------ columns
    def _new_laterals(self, n_old: int) -> nn.ModuleList:
        backbone = self.module.backbone
        sizes = [layer.out_features for layer in backbone.layers]
        laterals = [
            Lateral(n_old * sizes[i - 1], sizes[i], self.cfg.adapter_hidden)
            for i in range(1, len(sizes))
        ]
        laterals.append(
            Lateral(n_old * sizes[-1], self.module.head.out_features, self.cfg.adapter_hidden)
        )
        return nn.ModuleList(laterals).to(self.module.device)

    def _current_column(self) -> Column:
        module = self.module
        return Column(module.backbone, module.head, self.laterals)

    def before_experience(self, experience: Experience) -> None:
        if experience.index == 0 or len(self.frozen) == experience.index:
            return
        module = self.module
        column = copy.deepcopy(self._current_column())
        for p in column.parameters():
            p.requires_grad_(False)
        self.frozen.append(column.eval())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.run_seed * 1_000_003 + experience.index) * 31 + _COLUMN_SALT)
            module.backbone.reset_parameters()
            module.backbone.init_head(module.head)
            if self.cfg.lateral:
                object.__setattr__(self, "laterals", self._new_laterals(len(self.frozen)))

    def main_parameters(self):  # type: ignore[override]
        return list(self.laterals.parameters())

    # ------------------------------------------------------------------ forwards
    def tap_modifiers(self, x: torch.Tensor, role: str) -> Mapping[str, Any] | None:
        if not len(self.laterals):
            return None
        with torch.no_grad():
            old = column_outputs(self.frozen, x)
        modifiers: dict[str, Any] = {}
        names = self.module.backbone.tap_names
        for layer_index in range(1, len(names)):
            cat = torch.cat([hidden[layer_index - 1] for hidden, _ in old], 1)
            lateral = self.laterals[layer_index - 1]
            modifiers[names[layer_index]] = lambda z, c=cat, u=lateral: z + u(c)
        last = torch.cat([hidden[-1] for hidden, _ in old], 1)
        modifiers[LOGITS_TAP] = lambda z, c=last, u=self.laterals[-1]: z + u(c)
        return modifiers

    def eval_forward(self, x: torch.Tensor, experience: int | None) -> ForwardOutput | None:
        if experience is None or experience >= len(self.frozen):
            return None  # the current column, through the engine's forward
        hidden, logits = column_outputs(self.frozen[: experience + 1], x)[-1]
        return ForwardOutput(logits=logits, features=hidden[-1])

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        return {
            "frozen": [c.state_dict() for c in self.frozen],
            "laterals": self.laterals.state_dict(),
        }

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        frozen = []
        for k, weights in enumerate(state.get("frozen", [])):
            laterals = self._new_laterals(k) if (self.cfg.lateral and k > 0) else nn.ModuleList()
            column = copy.deepcopy(Column(self.module.backbone, self.module.head, laterals))
            column.load_state_dict(weights)
            for p in column.parameters():
                p.requires_grad_(False)
            frozen.append(column.eval())
        object.__setattr__(self, "frozen", frozen)
        n = len(frozen)
        laterals = self._new_laterals(n) if (self.cfg.lateral and n > 0) else nn.ModuleList()
        laterals.load_state_dict(state.get("laterals", {}))
        object.__setattr__(self, "laterals", laterals)
