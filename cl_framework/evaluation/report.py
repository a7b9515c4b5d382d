"""Run outputs: ``metrics.json`` (the DESIGN.md contract), ``acc_matrix.csv`` and plots."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from cl_framework.engine.runner import RunResult
from cl_framework.engine.timing import PhaseClock
from cl_framework.evaluation.metrics import average_accuracy_curve, summarize

SETTINGS = ("class_il", "task_il")


def package_versions() -> dict[str, str]:
    versions = {}
    for key, dist in (
        ("cl_framework", "cl_framework"),
        ("torch", "torch"),
        ("lightning", "pytorch-lightning"),
        ("hydra", "hydra-core"),
    ):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = "unknown"
    return versions


def build_metrics(
    result: RunResult,
    *,
    scenario: str,
    setting: str,
    strategies: Sequence[str],
    seed: int,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``metrics.json`` payload: exactly the keys DESIGN.md fixes."""
    matrices = {"class_il": result.class_il, "task_il": result.task_il}
    random_init = {
        "class_il": list(result.random_init.class_il),
        "task_il": list(result.random_init.task_il),
    }
    summaries = {k: summarize(m, np.asarray(random_init[k])) for k, m in matrices.items()}
    return {
        "scenario": scenario,
        "setting": setting,
        "n_experiences": int(result.class_il.shape[0]),
        "strategy": list(strategies),
        "seed": seed,
        "acc_matrix": {k: _round(m.tolist()) for k, m in matrices.items()},
        "final_avg_acc": {k: _round(s["final_avg_acc"]) for k, s in summaries.items()},
        "forgetting": {k: _round(s["forgetting"]) for k, s in summaries.items()},
        "bwt": {k: _round(s["bwt"]) for k, s in summaries.items()},
        "fwt": {k: _round(s["fwt"]) for k, s in summaries.items()},
        "random_init_acc": {k: _round(v) for k, v in random_init.items()},
        "wall_time_s": round(result.wall_time_s, 2),
        "train_time_s": round(result.train_time_s, 2),
        "versions": package_versions(),
        "config": dict(config),
    }


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return round(float(value), digits)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_results_log(log_path: Path | str, run_dir: Path, metrics: Mapping[str, Any]) -> Path:
    """One JSON line per finished run in a log shared by all runs (Mammoth's results logs):
    where it is, what it ran and its final numbers, to compare runs without opening each."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = metrics.get("config", {})
    record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run_dir": str(Path(run_dir).resolve()),
        "scenario": metrics["scenario"],
        "setting": metrics["setting"],
        "strategy": list(metrics["strategy"]),
        "seed": metrics["seed"],
        "buffer_size": config.get("buffer", {}).get("size"),
        "lr": config.get("optimizer", {}).get("lr"),
        "epochs": config.get("trainer", {}).get("epochs"),
        "name": config.get("name"),
        **{key: metrics[key] for key in ("final_avg_acc", "forgetting", "bwt", "fwt")},
        "wall_time_s": metrics.get("wall_time_s"),
    }
    with path.open("a") as fh:  # one short write per line: concurrent runs do not interleave
        fh.write(json.dumps(record) + "\n")
    return path


def write_timings(
    output_dir: Path,
    clock: PhaseClock,
    wall_time_s: float,
    train_batches: Mapping[str, int] | None = None,
) -> Path:
    """``timings.json``: the run's wall time by phase (:class:`PhaseClock`), beside metrics.json.

    Kept out of ``metrics.json``, whose keys are a fixed contract; on a resumed run the phases
    of the earlier processes are included (they travel in the checkpoint)."""
    path = Path(output_dir) / "timings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = clock.report(wall_time_s)
    if train_batches is not None:
        report["train_batches"] = dict(train_batches)
    _atomic_write_text(path, json.dumps(report, indent=2))
    return path


def write_outputs(output_dir: Path, metrics: Mapping[str, Any]) -> dict[str, Path]:
    """Write metrics.json, acc_matrix.csv and the PNG plots; returns their paths."""
    # matplotlib only now, when a run has results to draw (not for runs that fail early)
    from cl_framework.evaluation.plots import plot_accuracy_matrix, plot_average_accuracy

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": output_dir / "metrics.json", "csv": output_dir / "acc_matrix.csv"}
    _atomic_write_text(paths["metrics"], json.dumps(metrics, indent=2))
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        n = metrics["n_experiences"]
        # experiences numbered from 1, as in every printed line
        writer.writerow(["setting", "after_experience", *[f"exp_{j + 1}" for j in range(n)]])
        for setting in SETTINGS:
            for i, row in enumerate(metrics["acc_matrix"][setting]):
                writer.writerow([setting, i + 1, *row])
    curves = {}
    for setting in SETTINGS:
        acc = np.asarray(metrics["acc_matrix"][setting])
        title = f"{metrics['scenario']} {'+'.join(metrics['strategy'])} ({setting})"
        paths[f"matrix_{setting}"] = plot_accuracy_matrix(
            acc, output_dir / f"acc_matrix_{setting}.png", title
        )
        curves[setting] = average_accuracy_curve(acc)
    paths["curve"] = plot_average_accuracy(
        curves, output_dir / "avg_accuracy.png", f"{metrics['scenario']} average accuracy"
    )
    return paths


def fmt_acc(value: float, decimals: int = 2) -> str:
    """``value`` with ``decimals`` decimals; a value that rounds to zero prints without a sign."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_summary(metrics: Mapping[str, Any]) -> str:
    """Human-readable accuracy matrices and final metrics for the console.

    Experiences are numbered from 1, as in the progress lines; ``-0.00`` prints as ``0.00``.
    """
    lines = []
    for setting in SETTINGS:
        acc = metrics["acc_matrix"][setting]
        n = len(acc)
        lines.append(
            f"accuracy matrix ({setting}): row i = after training experience i, "
            "column j = accuracy on experience j"
        )
        label = "  after {:>2d}:"
        lines.append(" " * len(label.format(0)) + "".join(f"{f'e{j + 1}':>8s}" for j in range(n)))
        for i, row in enumerate(acc):
            lines.append(label.format(i + 1) + "".join(f"{fmt_acc(a):>8s}" for a in row))
    lines.append("{:<13s} {:>9s} {:>9s}".format("metric", "class-IL", "task-IL"))
    for key in ("final_avg_acc", "forgetting", "bwt", "fwt"):
        m = metrics[key]
        lines.append(f"{key:<13s} {fmt_acc(m['class_il']):>9s} {fmt_acc(m['task_il']):>9s}")
    lines.append(
        f"wall time {metrics['wall_time_s']:.1f}s (training {metrics['train_time_s']:.1f}s)"
    )
    return "\n".join(lines)
