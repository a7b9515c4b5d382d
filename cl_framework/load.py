"""Load a trained model back from a run directory, for analysis after training.

``load_trained("outputs/runs/<date>/<time>")`` rebuilds the run from the config stored in its
checkpoint (data included: heads and input shape come from the scenario) and loads the weights
of the last checkpoint, or of the one kept after experience ``k`` with
``trainer.keep_experience_checkpoints=true``::

    from cl_framework import load_trained

    run = load_trained("outputs/runs/2026-12-06/10-00-00", experience=2)
    logits = run.module.predict_logits(images_uint8)   # raw images, as the scenario stores them
    row = run.evaluate()                               # accuracy on every experience's test set
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_framework.engine.checkpoint import (
    checkpoint_path,
    experience_checkpoint_path,
    load_checkpoint,
)
from cl_framework.engine.evaluate import EvalRow
from cl_framework.engine.module import CLModule
from cl_framework.engine.runner import ContinualRunner
from cl_framework.errors import CheckpointError
from cl_framework.scenarios import Scenario


@dataclass
class TrainedRun:
    """A run rebuilt from its checkpoint: the trained module (eval mode), scenario, config."""

    module: CLModule
    scenario: Scenario
    config: dict[str, Any]
    checkpoint: Path
    runner: ContinualRunner

    def evaluate(self) -> EvalRow:
        """Class-IL and task-IL accuracy on every experience's test split."""
        row = self.runner.evaluate()
        self.module.eval()
        return row


def load_trained(
    run_dir: Path | str,
    experience: int | None = None,
    data_dir: str | None = None,
    accelerator: str = "cpu",
) -> TrainedRun:
    """The model of ``run_dir`` after experience ``experience`` (1-based; None = last saved).

    ``data_dir`` replaces the stored ``paths.data_dir`` (a run moved to another machine).
    """
    from cl_framework.build import build_runner

    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir) if experience is None else (
        experience_checkpoint_path(run_dir, experience)
    )  # fmt: skip
    if experience is not None and not path.is_file():
        kept = sorted(p.name for p in path.parent.glob("experience-*.ckpt"))
        raise CheckpointError(
            str(path),
            f"no checkpoint kept after experience {experience} (kept: {kept or 'none'})",
            "train with trainer.keep_experience_checkpoints=true, or pass experience=None",
        )
    payload = load_checkpoint(path)
    config = dict(payload["config"])
    config["logger"] = {"csv": {}}  # loading must not start a tracker run
    config["trainer"] = {**config["trainer"], "accelerator": accelerator, "strategy": "auto",
                         "devices": 1, "num_nodes": 1, "progress_bar": False}  # fmt: skip
    if data_dir is not None:
        config["paths"] = {**config["paths"], "data_dir": data_dir}
    scratch = Path(tempfile.mkdtemp(prefix="clf-load-"))
    try:
        runner = build_runner(config, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    runner.output_dir = None  # evaluating a loaded run writes nothing
    runner.load_checkpoint_payload(payload, str(path))
    runner.module.eval()
    return TrainedRun(runner.module, runner.scenario, dict(payload["config"]), path, runner)
