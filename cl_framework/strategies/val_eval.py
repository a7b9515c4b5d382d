"""Validation accuracy after every experience, for model selection (sweeps) without the test set.

``strategy=[derpp,val_eval]`` (list it last) evaluates the model on the validation splits of
the experiences seen so far (``scenario.val_fraction`` of each experience's training data,
carved out before training) after each experience, and writes ``val_metrics.json`` into the
run directory. ``clf-sweep`` optimises the final average validation accuracy from that file, so
hyper-parameters are never chosen on test data. The plug-in changes nothing in training.

Row i of the validation matrices holds the accuracy on experiences 0..i (future experiences
are left out: their heads may not be bound yet); ``final_avg_acc`` is the mean of the last row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_framework.engine.evaluate import evaluate_all
from cl_framework.engine.plugin import StrategyContext, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience
from cl_framework.strategies.registry import register_strategy

log = logging.getLogger(__name__)

VAL_METRICS_FILE = "val_metrics.json"
SETTINGS = ("class_il", "task_il")


@register_strategy
class ValidationEvaluator(StrategyPlugin):
    """Evaluates on validation splits after each experience; writes ``val_metrics.json``."""

    name = "val_eval"

    @dataclass
    class Config:
        batch_size: int = 1000  # evaluation batch size
        file: str = VAL_METRICS_FILE  # written into the run directory

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.batch_size <= 0:
            raise ConfigError("strategy.val_eval.batch_size", "must be positive")
        self.rows: dict[str, list[list[float]]] = {s: [] for s in SETTINGS}
        self.n_val: list[int] = []

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        empty = [e.index for e in ctx.scenario if e.val is None or len(e.val) == 0]
        if empty:
            raise ConfigError(
                "scenario.val_fraction",
                f"strategy 'val_eval' needs validation splits, but experience(s) {empty} have none",
                "hold out part of each experience's training data, e.g. scenario.val_fraction=0.1",
            )
        self.n_val = [len(e.val) for e in ctx.scenario]  # type: ignore[arg-type]

    def after_experience(self, experience: Experience) -> None:
        scenario = self.ctx.scenario
        seen = scenario.experiences[: experience.index + 1]
        as_test = dataclasses.replace(
            scenario, experiences=tuple(dataclasses.replace(e, test=e.val) for e in seen)
        )
        row = evaluate_all(self.module, as_test, self.cfg.batch_size)
        del self.rows["class_il"][experience.index :]
        del self.rows["task_il"][experience.index :]
        self.rows["class_il"].append([round(a, 4) for a in row.class_il])
        self.rows["task_il"].append([round(a, 4) for a in row.task_il])
        log.info(
            "validation after experience %d/%d: avg class-IL %.2f | task-IL %.2f "
            "(%d held-out samples of experiences 1..%d)",
            experience.index + 1,
            len(scenario),
            sum(row.class_il) / len(row.class_il),
            sum(row.task_il) / len(row.task_il),
            sum(self.n_val[: experience.index + 1]),
            experience.index + 1,
        )
        self._write()

    def summary(self) -> dict[str, Any]:
        """The ``val_metrics.json`` payload for the rows measured so far."""
        n = len(self.ctx.scenario)
        done = len(self.rows["class_il"])
        last = {s: self.rows[s][-1] if done else [] for s in SETTINGS}
        return {
            "split": "validation",
            "completed_experiences": done,
            "n_experiences": n,
            "n_val": list(self.n_val),
            "val_fraction": self.ctx.runner.config.get("scenario", {}).get("val_fraction")
            if self.ctx.runner is not None
            else None,
            "acc_matrix": {s: [list(r) for r in self.rows[s]] for s in SETTINGS},
            "avg_acc": {s: [round(sum(r) / len(r), 4) for r in self.rows[s]] for s in SETTINGS},
            # final average accuracy: mean over all experiences after the last one
            "final_avg_acc": {
                s: round(sum(last[s]) / len(last[s]), 4) if done == n else None for s in SETTINGS
            },
        }

    def _write(self) -> None:
        runner = self.ctx.runner
        if runner is None or runner.output_dir is None or runner.rank != 0:
            return
        path = Path(runner.output_dir) / self.cfg.file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.summary(), indent=2))
        os.replace(tmp, path)

    # a resumed run continues the matrices measured before the interruption
    def plugin_state(self) -> dict[str, Any]:
        return {"rows": {s: [list(r) for r in self.rows[s]] for s in SETTINGS}}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        rows = state.get("rows", {})
        self.rows = {s: [list(map(float, r)) for r in rows.get(s, [])] for s in SETTINGS}
