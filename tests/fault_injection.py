"""Test-only faults, loaded into a run with ``extra_modules=[tests.fault_injection]``.

* strategy ``_fault``: at global step ``CLF_FAULT_STEP`` (env var) it either SIGKILLs its own
  process (``CLF_FAULT=kill``), sends itself SIGINT (``interrupt``), or returns a NaN loss
  term (``nan``; config key ``strategy._fault.nan_at_step`` does the same without env vars).
  Without the env var it does nothing, so a reference run can carry the same config.
* ``CLF_FAULT=kill_in_write`` with ``CLF_FAULT_WRITE=<n>``: the n-th checkpoint write dies
  (SIGKILL) after writing half of the temporary file, before the rename.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cl_framework.engine import checkpoint
from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyPlugin
from cl_framework.strategies import register_strategy


@register_strategy
class Fault(StrategyPlugin):
    name = "_fault"

    @dataclass
    class Config:
        nan_at_step: int = -1

    def _due(self) -> str | None:
        if os.environ.get("CLF_FAULT_STEP") is None:
            return None
        if self.module.step_count + 1 == int(os.environ["CLF_FAULT_STEP"]):
            return os.environ.get("CLF_FAULT")
        return None

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        if self.module.step_count == self.cfg.nan_at_step or self._due() == "nan":
            return {"planted": out.logits.new_tensor(float("nan"))}
        return {}

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        fault = self._due()
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)


if os.environ.get("CLF_FAULT") == "kill_in_write":
    _original_write = checkpoint._write_file
    _writes = {"n": 0}

    def _dying_write(tmp: Path, payload: dict) -> None:
        _writes["n"] += 1
        if _writes["n"] == int(os.environ.get("CLF_FAULT_WRITE", "1")):
            _original_write(tmp, payload)
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        _original_write(tmp, payload)

    checkpoint._write_file = _dying_write
