"""``ContinualRunner``: the experience loop, outside Lightning.

Per experience: plug-ins' ``before_experience``; the (possibly plug-in-edited) training data; a
fresh ``pl.Trainer`` and one ``fit`` (a re-used Trainer trains zero steps on its second fit, and
optimizer/scheduler/epoch counters are per experience anyway); ``after_experience``; evaluation
on every experience, future ones included. The accuracy matrices live here, not in a logger.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import Logger

from cl_framework.engine.evaluate import EvalRow, evaluate_all
from cl_framework.engine.module import CLModule
from cl_framework.scenarios import Scenario, Split
from cl_framework.scenarios.loader import TensorBatchLoader

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """``trainer`` config group: the per-experience training loop and evaluation."""

    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 1000
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    deterministic: bool = False
    log_every_n_steps: int = 50
    progress_bar: Any = "auto"
    gradient_clip_val: float | None = None
    limit_train_batches: int | None = None


@dataclass
class RunResult:
    """Everything a run measured; turned into ``metrics.json`` by the report writer."""

    class_il: np.ndarray
    task_il: np.ndarray
    random_init: EvalRow
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    experience_train_time_s: list[float] = field(default_factory=list)


def resolve_device(accelerator: str) -> torch.device:
    """The device training will run on, known before any Trainer exists (for the buffer)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


class ContinualRunner:
    """Drives one Lightning fit per experience and fills the accuracy matrices."""

    def __init__(
        self,
        scenario: Scenario,
        module: CLModule,
        trainer: TrainerConfig,
        seed: int = 0,
        loggers: Sequence[Logger] = (),
        output_dir: Path | None = None,
    ) -> None:
        self.scenario = scenario
        self.module = module
        self.trainer_cfg = trainer
        self.seed = seed
        self.loggers = list(loggers)
        self.output_dir = output_dir
        self.device = resolve_device(trainer.accelerator)

    # ------------------------------------------------------------------ fits
    def make_trainer(self, epochs: int, limit_train_batches: int | None = None) -> pl.Trainer:
        """A fresh Trainer for one fit, sharing the run's loggers."""
        cfg = self.trainer_cfg
        show_bar = sys.stdout.isatty() if cfg.progress_bar == "auto" else bool(cfg.progress_bar)
        callbacks = [TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps))]
        limit = limit_train_batches if limit_train_batches is not None else cfg.limit_train_batches
        return pl.Trainer(
            accelerator="gpu" if self.device.type == "cuda" else "cpu",
            devices=cfg.devices,
            precision=cfg.precision,
            max_epochs=epochs,
            deterministic=cfg.deterministic,
            logger=self.loggers if self.loggers else False,
            callbacks=callbacks if show_bar else [],
            enable_progress_bar=show_bar,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_train_batches=limit if limit is not None else 1.0,
            log_every_n_steps=max(1, cfg.log_every_n_steps),
        )

    def loader(
        self, split: Split, task_label: int, seed_offset: int = 0, batch_size: int | None = None
    ) -> TensorBatchLoader:
        """A shuffled batch iterator over ``split``, seeded from the run seed and an offset."""
        return TensorBatchLoader(
            split.x,
            split.y,
            task_label=split.task_labels(task_label),
            batch_size=batch_size or self.trainer_cfg.batch_size,
            shuffle=True,
            seed=self.seed * 100_003 + seed_offset,
        )

    def fit(
        self,
        split: Split,
        task_label: int,
        epochs: int | None = None,
        module: CLModule | None = None,
        seed_offset: int = 0,
        limit_train_batches: int | None = None,
    ) -> float:
        """Train ``module`` (default: the run's) on ``split``; returns the seconds it took.

        Public so that plug-ins can train candidate copies (WSCL) or run extra phases (sleep).
        """
        module = module if module is not None else self.module
        if len(split.y) == 0:
            return 0.0
        trainer = self.make_trainer(epochs or self.trainer_cfg.epochs, limit_train_batches)
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=self.loader(split, task_label, seed_offset))
        elapsed = time.perf_counter() - start
        module.to(self.device)
        return elapsed

    def evaluate(self) -> EvalRow:
        self.module.to(self.device)
        return evaluate_all(self.module, self.scenario, self.trainer_cfg.eval_batch_size)

    # ------------------------------------------------------------------- run
    def run(self) -> RunResult:
        start = time.perf_counter()
        scenario = self.scenario
        n = scenario.n_experiences
        class_il = np.zeros((n, n))
        task_il = np.zeros((n, n))
        random_init = self.evaluate()
        log.info("random init: class-IL %s", " ".join(f"{a:5.1f}" for a in random_init.class_il))
        times: list[float] = []
        for i, experience in enumerate(scenario):
            self.module.experience_index = i
            self.module.call_plugins("before_experience", experience)
            split = self.module.fold_plugins("train_data", experience.train, experience)
            log.info(
                "experience %d/%d: classes %s, %d training samples",
                i + 1,
                n,
                list(experience.classes),
                len(split.y),
            )
            times.append(self.fit(split, experience.task_label, seed_offset=i))
            self.module.call_plugins("after_experience", experience)
            row = self.evaluate()
            class_il[i] = row.class_il
            task_il[i] = row.task_il
            self._log_row(i, row, times[-1])
        return RunResult(
            class_il=class_il,
            task_il=task_il,
            random_init=random_init,
            train_time_s=float(sum(times)),
            wall_time_s=time.perf_counter() - start,
            experience_train_time_s=times,
        )

    def _log_row(self, i: int, row: EvalRow, seconds: float) -> None:
        seen = slice(0, i + 1)
        avg_cil = float(np.mean(row.class_il[seen]))
        avg_til = float(np.mean(row.task_il[seen]))
        log.info(
            "after experience %d: avg class-IL %.2f | task-IL %.2f | trained in %.1fs | %s",
            i + 1,
            avg_cil,
            avg_til,
            seconds,
            " ".join(f"{a:5.1f}" for a in row.class_il),
        )
        metrics = {
            "eval/avg_acc_class_il": avg_cil,
            "eval/avg_acc_task_il": avg_til,
            "experience": float(i),
        }
        for j, (a, b) in enumerate(zip(row.class_il, row.task_il, strict=True)):
            metrics[f"eval/acc_class_il/exp{j:02d}"] = a
            metrics[f"eval/acc_task_il/exp{j:02d}"] = b
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.module.step_count)
            logger.save()
