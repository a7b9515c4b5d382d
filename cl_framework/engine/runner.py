"""``ContinualRunner``: the experience loop, outside Lightning, with checkpoints and resume.

Per experience: plug-ins' ``before_experience``; the (possibly plug-in-edited) training data;
fresh optimizers; one short Lightning fit per epoch (a fresh ``pl.Trainer`` each: a re-used
Trainer trains zero steps on its second fit); ``after_experience``; evaluation on every
experience, future ones included. The accuracy matrices live here, not in a logger.

Checkpoints (``<run dir>/checkpoints/last.ckpt``) are written at every experience boundary,
optionally every N steps, on SIGINT/SIGTERM and before stopping on a non-finite loss. They hold
the model, plug-in state, optimizers, buffer, head mapping, every RNG state, the matrices so far
and the position (experience, epoch, batch), so ``resume=<run dir>`` continues exactly.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from cl_framework.engine.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    capture_global_rng,
    checkpoint_path,
    experience_checkpoint_path,
    keep_copy,
    restore_global_rng,
)
from cl_framework.engine.distributed import global_rank, world_size_from_config
from cl_framework.engine.evaluate import EvalRow, evaluate_all
from cl_framework.engine.module import CLModule
from cl_framework.engine.progress import ContinualProgressBar
from cl_framework.engine.timing import PhaseClock
from cl_framework.errors import CheckpointError, NonFiniteLossError, RunInterrupted
from cl_framework.scenarios import Scenario, Split
from cl_framework.scenarios.disk import batch_loader, resolve_num_workers
from cl_framework.scenarios.loader import TensorBatchLoader, epoch_seed

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """``trainer`` config group: the per-experience training loop, evaluation, checkpoints."""

    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 256
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False
    log_every_n_steps: int = 50
    progress_bar: Any = "auto"
    gradient_clip_val: float | None = None
    limit_train_batches: int | None = None
    checkpoint: bool = True
    checkpoint_every_n_steps: int | None = None
    keep_experience_checkpoints: bool = False
    check_finite_every_n_steps: int | None = None
    num_threads: int | None = None
    steps_per_batch: int = 16
    channels_last: Any = "auto"  # true | false | auto (conv nets on CPU)
    fused_forward: bool = True
    compile: bool = False
    num_workers: int | None = None


@dataclass
class RunResult:
    """Everything a run measured; turned into ``metrics.json`` by the report writer."""

    class_il: np.ndarray
    task_il: np.ndarray
    random_init: EvalRow
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    experience_train_time_s: list[float] = field(default_factory=list)


@dataclass
class _Progress:
    """The runner's own position and results so far (part of every checkpoint)."""

    class_il: np.ndarray
    task_il: np.ndarray
    random_init: EvalRow | None = None
    completed: int = 0  # experiences fully trained and evaluated
    times: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of earlier (interrupted) processes


def resolve_device(accelerator: str) -> torch.device:
    """The device training will run on, known before any Trainer exists (for the buffer)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


class ContinualRunner:
    """Drives the per-experience fits, fills the accuracy matrices, checkpoints and resumes."""

    def __init__(
        self,
        scenario: Scenario,
        module: CLModule,
        trainer: TrainerConfig,
        seed: int = 0,
        loggers: Sequence[Logger] = (),
        output_dir: Path | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.scenario = scenario
        self.module = module
        self.trainer_cfg = trainer
        self.seed = seed
        self.loggers = list(loggers)
        self.output_dir = output_dir
        self.config = config or {}
        self.device = resolve_device(trainer.accelerator)
        self.world_size = world_size_from_config(
            trainer.strategy, trainer.devices, trainer.num_nodes
        )
        self.rank = global_rank(trainer.devices) if self.world_size > 1 else 0
        self.num_workers = resolve_num_workers(trainer.num_workers)
        n = scenario.n_experiences
        self.progress = _Progress(class_il=np.zeros((n, n)), task_il=np.zeros((n, n)))
        self._resume_mid_experience = False
        self._stop_signal: int | None = None
        self.clock = PhaseClock()  # where the wall time goes (timings.json)
        # training batches (main + plug-in fits) run, and those an uncapped run would have (this
        # process only): ``timings.json`` scales a ``limit_train_batches`` profile with them
        self.train_batches = {"run": 0, "uncapped": 0}

    # ------------------------------------------------------------------ fits
    def make_trainer(self, label: str = "", total_steps: int = 0, leave: bool = True) -> pl.Trainer:
        """A fresh Trainer for one epoch, sharing the run's loggers; its progress bar shows
        ``label`` (where the run is) and counts ``total_steps`` optimizer steps."""
        cfg = self.trainer_cfg
        show_bar = sys.stdout.isatty() if cfg.progress_bar == "auto" else bool(cfg.progress_bar)
        show_bar = show_bar and self.rank == 0  # DDP: one bar
        callbacks = [ContinualProgressBar(label, total_steps, leave=leave)]
        return pl.Trainer(
            accelerator="gpu" if self.device.type == "cuda" else "cpu",
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            precision=cfg.precision,
            max_epochs=1,
            deterministic=cfg.deterministic,
            logger=self.loggers if self.loggers else False,
            callbacks=callbacks if show_bar else [],
            enable_progress_bar=show_bar,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, cfg.log_every_n_steps),
        )

    def loader(
        self,
        split: Split,
        task_label: int,
        experience: int,
        epoch: int,
        skip_batches: int = 0,
        stream: int = 0,
        batch_size: int | None = None,
        max_batches: int | None = None,
    ) -> TensorBatchLoader:
        """One epoch of shuffled batches of ``split`` (in order for a stream split,
        ``Split.ordered``); the shuffle depends only on the seeds.

        A split streamed from disk gets the same batches, decoded by ``trainer.num_workers``
        worker processes (:mod:`cl_framework.scenarios.disk`)."""
        return batch_loader(
            split.x,
            split.y,
            split.task_labels(task_label),
            batch_size=batch_size or self.trainer_cfg.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            seed=epoch_seed(self.seed, experience, epoch, stream),
            shuffle=not split.ordered,
            skip_batches=skip_batches,
            max_batches=max_batches
            if max_batches is not None
            else self.trainer_cfg.limit_train_batches,
            rank=self.rank,
            world_size=self.world_size,
            steps_per_batch=self.trainer_cfg.steps_per_batch,
            head=split.head,
        )

    def fit(
        self,
        split: Split,
        task_label: int,
        epochs: int | None = None,
        module: CLModule | None = None,
        stream: int = 1,
        limit_train_batches: int | None = None,
    ) -> float:
        """Train ``module`` (default: the run's) on ``split`` from fresh optimizers.

        Public so that plug-ins can train candidate copies (WSCL) or run extra phases (sleep);
        ``stream`` separates their shuffles from the main training's. Returns seconds taken.
        """
        module = module if module is not None else self.module
        index = module.experience_index
        module.begin_experience(index)
        start = time.perf_counter()
        n_epochs = epochs or self.trainer_cfg.epochs
        with self.clock.phase("fit"):
            for epoch in range(n_epochs):
                loader = self.loader(
                    split, task_label, index, epoch, stream=stream, max_batches=limit_train_batches
                )
                self._count_batches(loader, split)
                label = f"{self._where(index)} | extra fit {stream} epoch {epoch + 1}/{n_epochs}"
                self._fit_epoch(module, loader, label, leave=False)
        return time.perf_counter() - start

    def _count_batches(self, loader: TensorBatchLoader, split: Split, skip: int = 0) -> None:
        """Batches this epoch runs, and those it would run without ``limit_train_batches``."""
        self.train_batches["run"] += loader.remaining_batches()
        rows_per_step = loader.batch_size * self.world_size
        self.train_batches["uncapped"] += max(0, -(-len(split.y) // rows_per_step) - skip)

    def _where(self, experience_index: int) -> str:
        return f"experience {experience_index + 1}/{self.scenario.n_experiences}"

    def _fit_epoch(
        self, module: CLModule, loader: TensorBatchLoader, label: str = "", leave: bool = True
    ) -> None:
        if len(loader) > 0:
            trainer = self.make_trainer(label, loader.remaining_batches(), leave)
            trainer.fit(module, train_dataloaders=loader)
            module.to(self.device)
        module.end_epoch()

    def _train_experience(self, experience_index: int, split: Split, task_label: int) -> float:
        """The main training of one experience, resuming mid-experience if positioned so."""
        module = self.module
        if self._resume_mid_experience:
            self._resume_mid_experience = False
            first_epoch, skip = module.epoch_in_experience, module.batches_done_in_epoch
        else:
            module.begin_experience(experience_index)
            first_epoch, skip = 0, 0
        start = time.perf_counter()
        with self.clock.phase("train"):
            for epoch in range(first_epoch, self.trainer_cfg.epochs):
                skip_now = skip if epoch == first_epoch else 0
                module.epoch_in_experience = epoch
                module.batches_done_in_epoch = skip_now
                module.call_plugins("on_epoch_start", epoch)
                loader = self.loader(split, task_label, experience_index, epoch, skip_now)
                self._count_batches(loader, split, skip_now)
                n_epochs = self.trainer_cfg.epochs
                label = f"{self._where(experience_index)} | epoch {epoch + 1}/{n_epochs}"
                self._fit_epoch(module, loader, label, leave=epoch + 1 == n_epochs)
                module.call_plugins("on_epoch_end", epoch)
        return time.perf_counter() - start

    def evaluate(self) -> EvalRow:
        self.module.to(self.device)
        with self.clock.phase("evaluate"):
            return evaluate_all(
                self.module,
                self.scenario,
                self.trainer_cfg.eval_batch_size,
                num_workers=self.num_workers,
            )

    # ------------------------------------------------------------------- run
    def run(self) -> RunResult:
        """Train and evaluate every experience (continuing from a loaded checkpoint)."""
        start = time.perf_counter()
        scenario = self.scenario
        progress = self.progress
        self.module.step_hook = self._after_step
        self.module.phase_clock = self.clock
        restore = self._install_signal_handlers()
        try:
            if progress.random_init is None:
                self.module.call_plugins("assign_heads", scenario[0])
                progress.random_init = self.evaluate()
                log.info(
                    "before training (FWT reference): class-IL accuracy on experiences 1..%d: %s",
                    scenario.n_experiences,
                    " ".join(f"{a:5.1f}" for a in progress.random_init.class_il),
                )
            for i in range(progress.completed, scenario.n_experiences):
                self._run_experience(i)
                progress.completed = i + 1
                if self.trainer_cfg.checkpoint:
                    path = self.save_checkpoint()
                    if path is not None and self.trainer_cfg.keep_experience_checkpoints:
                        keep_copy(path, experience_checkpoint_path(path.parent.parent, i + 1))
                self._check_stop()
        except (NonFiniteLossError, RunInterrupted) as exc:
            progress.elapsed_s += time.perf_counter() - start
            self._save_on_failure(exc)
            raise
        finally:
            restore()
            self.module.step_hook = None
            self.module.phase_clock = None
        progress.elapsed_s += time.perf_counter() - start
        return RunResult(
            class_il=progress.class_il.copy(),
            task_il=progress.task_il.copy(),
            random_init=progress.random_init,
            train_time_s=float(sum(progress.times)),
            wall_time_s=progress.elapsed_s,
            experience_train_time_s=list(progress.times),
        )

    def _run_experience(self, i: int) -> None:
        experience = self.scenario[i]
        module = self.module
        resuming = self._resume_mid_experience
        if not resuming:
            module.experience_index = i
            module.call_plugins("before_experience", experience)
            module.in_experience = True
        split = module.fold_plugins("train_data", experience.train, experience)
        log.info(
            "experience %d/%d: classes %s, %d training samples%s",
            i + 1,
            self.scenario.n_experiences,
            list(experience.classes),
            len(split.y),
            " (resumed)" if resuming else "",
        )
        seconds = self._train_experience(i, split, experience.task_label)
        if len(self.progress.times) > i:
            self.progress.times[i] += seconds
        else:
            self.progress.times.append(seconds)
        module.call_plugins("after_experience", experience)
        if i + 1 < self.scenario.n_experiences:
            module.call_plugins("assign_heads", self.scenario[i + 1])
        row = self.evaluate()
        self.progress.class_il[i] = row.class_il
        self.progress.task_il[i] = row.task_il
        module.in_experience = False
        self._log_row(i, row, self.progress.times[i])

    def _log_row(self, i: int, row: EvalRow, seconds: float) -> None:
        seen = slice(0, i + 1)
        avg_cil = float(np.mean(row.class_il[seen]))
        avg_til = float(np.mean(row.task_il[seen]))
        log.info(
            "after experience %d/%d: avg class-IL %.2f | task-IL %.2f (experiences 1..%d) | "
            "trained in %.1fs | class-IL on experiences 1..%d: %s",
            i + 1,
            self.scenario.n_experiences,
            avg_cil,
            avg_til,
            i + 1,
            seconds,
            len(row.class_il),
            " ".join(f"{a:5.1f}" for a in row.class_il),
        )
        metrics = {
            "eval/avg_acc_class_il": avg_cil,
            "eval/avg_acc_task_il": avg_til,
            "experience": float(i + 1),  # numbered from 1, as in every printed line
        }
        for j, (a, b) in enumerate(zip(row.class_il, row.task_il, strict=True)):
            metrics[f"eval/acc_class_il/exp{j + 1:02d}"] = a
            metrics[f"eval/acc_task_il/exp{j + 1:02d}"] = b
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.module.step_count)
            logger.save()

    # ------------------------------------------------------- steps, signals
    def _after_step(self, module: CLModule) -> None:
        every = self.trainer_cfg.checkpoint_every_n_steps
        if every and self.trainer_cfg.checkpoint and module.step_count % every == 0:
            self.save_checkpoint()
        self._check_stop()

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            raise RunInterrupted(self._stop_signal, self.module.step_count)

    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT / SIGTERM request a stop at the next step boundary (main thread only)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning("signal %d: stopping after the current step and saving", signum)

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler)

        return restore

    def _save_on_failure(self, exc: Exception) -> None:
        """Checkpoint the last consistent state and write the partial results."""
        if self.output_dir is None:
            return
        if self.trainer_cfg.checkpoint:
            path = self.save_checkpoint()
            log.error("%s; checkpoint saved to %s", exc, path)
        self.write_partial_results(reason=str(exc))

    def write_partial_results(self, reason: str) -> Path | None:
        """``partial_metrics.json``: the rows of the matrices finished so far."""
        if self.output_dir is None or self.rank != 0:
            return None
        done = self.progress.completed
        payload = {
            "status": "incomplete",
            "reason": reason,
            "completed_experiences": done,
            "n_experiences": self.scenario.n_experiences,
            "step": self.module.step_count,
            "acc_matrix": {
                "class_il": self.progress.class_il[:done].tolist(),
                "task_il": self.progress.task_il[:done].tolist(),
            },
            "resume": f"clf-train resume={self.output_dir}",
        }
        path = self.output_dir / "partial_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        return path

    # ---------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        p = self.progress
        random_init = p.random_init
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config,
            "class_order": list(self.scenario.class_order),
            "training": self.module.training_state(),
            "rng": capture_global_rng(),
            "runner": {
                "completed": p.completed,
                "class_il": torch.from_numpy(p.class_il.copy()),
                "task_il": torch.from_numpy(p.task_il.copy()),
                "random_init": None
                if random_init is None
                else {"class_il": list(random_init.class_il), "task_il": list(random_init.task_il)},
                "times": list(p.times),
                "elapsed_s": p.elapsed_s,
                "phases": self.clock.state_dict(),
            },
        }

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes (replicated state); other ranks return None."""
        if self.output_dir is None or self.rank != 0:
            return None
        with self.clock.phase("checkpoint"):
            return atomic_save(self.checkpoint_payload(), checkpoint_path(self.output_dir))

    def load_checkpoint_payload(self, payload: dict[str, Any], source: str) -> None:
        """Restore a run from :meth:`checkpoint_payload` (after the run was rebuilt)."""
        if list(payload["class_order"]) != list(self.scenario.class_order):
            raise CheckpointError(
                source,
                "its class order differs from the rebuilt scenario's",
                "resume with the same scenario config and class_order_seed",
            )
        r = payload["runner"]
        p = self.progress
        p.completed = int(r["completed"])
        p.class_il = r["class_il"].numpy().copy()
        p.task_il = r["task_il"].numpy().copy()
        ri = r["random_init"]
        p.random_init = None if ri is None else EvalRow(list(ri["class_il"]), list(ri["task_il"]))
        p.times = [float(t) for t in r["times"]]
        p.elapsed_s = float(r["elapsed_s"])
        self.clock.load_state_dict(r.get("phases", {}))  # absent in checkpoints before timings
        training = payload["training"]
        pos = training["position"]
        mid = bool(pos["in_experience"]) and int(pos["experience"]) == p.completed
        try:
            self.module.load_training_state(training, with_optimizers=bool(mid))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                source, f"does not match this run ({str(exc)[:200]})", "resume with its config"
            ) from None
        self._resume_mid_experience = bool(mid)
        restore_global_rng(payload["rng"])
        self.module.to(self.device)
        if self.module.buffer is not None:
            self.module.buffer.to(self.device)
        log.info(
            "resumed from %s: %d experience(s) done, step %d%s",
            source,
            p.completed,
            self.module.step_count,
            f", inside experience {p.completed + 1} at epoch {pos['epoch']} batch {pos['batch']}"
            if mid
            else "",
        )
