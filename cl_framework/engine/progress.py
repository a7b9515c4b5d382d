"""The console progress bar of a continual run.

Lightning's own bar counts its batches (our chunks of ``trainer.steps_per_batch`` optimizer
steps), refreshes every N of them and says "Epoch 0" in every experience, because the runner
builds one Trainer per epoch. This bar says where the run is (experience i/N, epoch e/E),
counts optimizer steps, shows the loss and tqdm's rate and ETA, and refreshes on a clock, so
it moves on a long CIFAR epoch and costs nothing on a fast MNIST one.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm


class ContinualProgressBar(ProgressBar):
    """One tqdm line per epoch of one experience, in optimizer steps."""

    def __init__(
        self, label: str, total_steps: int, leave: bool = True, refresh_s: float = 0.5
    ) -> None:
        super().__init__()
        self.label = label
        self.total_steps = total_steps
        self.leave = leave  # keep the line when the epoch ends (the last epoch of an experience)
        self.refresh_s = refresh_s
        self._enabled = True
        self._bar: tqdm | None = None
        self._first_step = 0
        self._last_refresh = 0.0
        self._last_loss: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        self._first_step = int(getattr(pl_module, "step_count", 0))
        self._last_refresh = time.monotonic()
        self._bar = tqdm(
            total=self.total_steps,
            desc=self.label,
            unit="step",
            dynamic_ncols=True,
            file=sys.stdout,
            leave=self.leave,
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._last_loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        now = time.monotonic()
        if self._bar is None or now - self._last_refresh < self.refresh_s:
            return
        self._last_refresh = now
        self._show(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._show(pl_module)
            self._bar.close()
            self._bar = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _show(self, pl_module: pl.LightningModule) -> None:
        bar = self._bar
        assert bar is not None
        bar.n = min(self.total_steps, int(getattr(pl_module, "step_count", 0)) - self._first_step)
        if self._last_loss is not None:  # one device sync per refresh, not per step
            bar.set_postfix_str(f"loss {float(self._last_loss):.4f}", refresh=False)
        bar.refresh()
