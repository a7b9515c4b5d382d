"""Shared pieces of the method experiments: one ``clf-train`` run, mean ± std, paired deltas.

Each method's ``experiments/<method>/run_*.py`` lists its comparisons (a base config and the
same config + the method) and calls :func:`train_run` for every (config, seed); a finished run
(its ``metrics.json`` exists) is read back, not repeated, unless ``FORCE=1``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def train_run(name: str, overrides: Sequence[str], seed: int, runs_dir: Path) -> dict[str, Any]:
    """Run ``clf-train <overrides> seed=<seed>`` (one thread) unless done; its metrics.json."""
    out = runs_dir / f"{name}-seed{seed}"
    metrics = out / "metrics.json"
    if not metrics.exists() or os.environ.get("FORCE") == "1":
        cmd = [
            str(Path(sys.executable).parent / "clf-train"),
            *overrides,
            f"seed={seed}",
            f"hydra.run.dir={out}",
            "trainer.progress_bar=false",
            "trainer.num_threads=1",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.setdefault("CLF_DATA_DIR", str(ROOT.parent / "shared" / "data"))
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with (runs_dir / f"{out.name}.log").open("w") as log:
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=log, stderr=log)
        (out / "process_time_s.txt").write_text(f"{time.perf_counter() - start:.2f}\n")
    m = json.loads(metrics.read_text())
    m["run_dir"] = str(out)
    return m


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The numbers a results table needs from one metrics.json."""
    n = m["n_experiences"]
    cil = m["acc_matrix"]["class_il"]
    return {
        "class_il": m["final_avg_acc"]["class_il"],
        "task_il": m["final_avg_acc"]["task_il"],
        "fwt_class_il": m["fwt"]["class_il"],
        "fwt_task_il": m["fwt"]["task_il"],
        "forgetting_class_il": m["forgetting"]["class_il"],
        "next_experience_acc": [cil[j - 1][j] for j in range(1, n)],
        "random_init_class_il": m["random_init_acc"]["class_il"],
        "wall_time_s": m["wall_time_s"],
        "train_time_s": m["train_time_s"],
    }


def mean_std(values: Sequence[float]) -> str:
    """``mean ± sample std`` (std 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def paired(method: Sequence[float], base: Sequence[float]) -> list[float]:
    """Per-seed differences method - base (same seeds, same order)."""
    return [a - b for a, b in zip(method, base, strict=True)]
