"""Aggregating the runs' ``metrics.json`` into ``LEADERBOARD.md``, ``results.csv`` and a plot."""

from __future__ import annotations

import csv
import json
import math
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_framework.leaderboard.launch import DONE, read_status
from cl_framework.leaderboard.targets import Target


@dataclass
class RunValue:
    seed: int
    value: float
    wall_time_s: float
    train_time_s: float
    run_dir: Path


@dataclass
class RowResult:
    """Our numbers for one target row."""

    target: Target
    runs: list[RunValue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float | None:
        return sum(r.value for r in self.runs) / self.n if self.runs else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (0 for a single seed)."""
        if not self.runs:
            return None
        if self.n == 1:
            return 0.0
        m = self.mean
        return math.sqrt(sum((r.value - m) ** 2 for r in self.runs) / (self.n - 1))

    @property
    def within(self) -> bool | None:
        return None if self.mean is None else self.target.within(self.mean)

    @property
    def wall_time_s(self) -> float | None:
        return sum(r.wall_time_s for r in self.runs) / self.n if self.runs else None


_SEED_DIR = re.compile(r"^seed(\d+)$")


def collect(
    targets: Sequence[Target], runs_dir: Path, seeds: Sequence[int] | None = None
) -> list[RowResult]:
    """Our value of each row from ``<runs_dir>/<experiment>/seed<s>/metrics.json``.

    ``seeds``: only these seeds (default: every seed folder found). Runs that did not finish
    contribute their status note (data missing, failure) instead of a value.
    """
    results = []
    for target in targets:
        row = RowResult(target)
        exp_dir = Path(runs_dir) / target.experiment
        found = sorted(
            (int(m.group(1)), p)
            for p in (exp_dir.iterdir() if exp_dir.is_dir() else [])
            if p.is_dir() and (m := _SEED_DIR.match(p.name))
        )
        notes: dict[str, list[int]] = {}
        for seed, run_dir in found:
            if seeds is not None and seed not in seeds:
                continue
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                metrics = json.loads(metrics_path.read_text())
                value = float(metrics[target.metric][target.setting_key])
                row.runs.append(
                    RunValue(
                        seed,
                        value,
                        float(metrics.get("wall_time_s", float("nan"))),
                        float(metrics.get("train_time_s", float("nan"))),
                        run_dir,
                    )
                )
                continue
            status = read_status(run_dir)
            if status and status.get("status") != DONE:
                text = f"{status['status']}: {status.get('message', '')}".strip().rstrip(":")
            else:
                text = "unfinished (no metrics.json)"
            notes.setdefault(text, []).append(seed)
        row.notes = [f"seed(s) {', '.join(map(str, s))}: {_short(t)}" for t, s in notes.items()]
        results.append(row)
    return results


def _short(text: str, limit: int = 240) -> str:
    """A note without the long "Fix: ..." advice (it stays in leaderboard_status.json)."""
    text = text.split(". Fix:")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(value: float | None, digits: int = 2) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _verdict(row: RowResult) -> str:
    if row.within is None:
        return "not run"
    return "yes" if row.within else "**no**"


def _published(t: Target) -> str:
    return f"{t.published:.2f}" + (f" +- {t.published_std:.2f}" if t.published_std else "")


def markdown(
    results: Sequence[RowResult],
    session: dict[str, Any] | None = None,
    plot_name: str | None = None,
) -> str:
    """The LEADERBOARD.md text: one table row per target, then per-seed values and notes."""
    lines = [
        "# Leaderboard: published numbers vs. ours",
        "",
        "Written by `clf-leaderboard` from the targets file (`targets.yaml`) and the runs' "
        "`metrics.json`. Ours: mean +- sample std over seeds (n = number of seeds); *within*: "
        "our mean lies in the row's tolerance band around the published value. Wall time: mean "
        "seconds per run (`metrics.json` wall_time_s).",
        "",
    ]
    if session:
        lines += [
            f"Last run: `{session.get('command', '')}`, {session.get('runs_executed', 0)} run(s) "
            f"executed in {session.get('elapsed_s', 0) / 60:.1f} min with "
            f"{session.get('jobs', 1)} job(s) on {session.get('machine', '')}"
            f" ({session.get('finished_at', '')}).",
            "",
        ]
    lines += [
        "| row | paper, table | benchmark | strategy | buffer | setting | metric | published | "
        "ours (mean +- std) | n | ours - published | tolerance | within | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.target
        ours = "-" if r.mean is None else f"{r.mean:.2f} +- {r.std:.2f}"
        delta = "-" if r.mean is None else f"{r.mean - t.published:+.2f}"
        lines.append(
            f"| {t.id} | {t.paper}, {t.table} | {t.benchmark} | {t.strategy} | "
            f"{'-' if t.buffer is None else t.buffer} | {t.setting} | {t.metric} | "
            f"{_published(t)} | {ours} | {r.n} | {delta} | {t.tolerance_text()} | "
            f"{_verdict(r)} | {_fmt(r.wall_time_s, 1)} |"
        )
    run = [r for r in results if r.runs]
    if run:
        n_within = sum(bool(r.within) for r in run)
        lines += ["", f"{n_within} of {len(run)} measured rows within tolerance."]
    if plot_name:
        lines += ["", f"![ours vs published]({plot_name})"]
    lines += [
        "",
        "## Per-seed values",
        "",
        "| row | experiment | seed: value (wall s) |",
        "|---|---|---|",
    ]
    for r in results:
        if r.runs:
            values = ", ".join(f"{v.seed}: {v.value:.2f} ({v.wall_time_s:.0f})" for v in r.runs)
            lines.append(f"| {r.target.id} | `{r.target.experiment}` | {values} |")
    noted = [r for r in results if r.notes or not r.runs]
    if noted:
        lines += ["", "## Notes", ""]
        for r in noted:
            t = r.target
            if r.notes:
                for note in r.notes:
                    lines.append(f"- `{t.id}` (`{t.experiment}`): {note}")
            else:
                offline = "" if t.data_offline else " (its data is not available offline)"
                lines.append(f"- `{t.id}` (`{t.experiment}`): not run{offline}")
    papers = dict.fromkeys((r.target.paper, r.target.citation) for r in results)
    lines += ["", "## Papers", ""]
    lines += [f"- `{key}`: {citation}" for key, citation in papers]
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[RowResult], path: Path) -> None:
    """One line per (row, seed) with our value: the numbers behind LEADERBOARD.md."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["row", "experiment", "seed", "metric", "setting", "value", "published",
             "wall_time_s", "train_time_s"]
        )  # fmt: skip
        for r in results:
            t = r.target
            for v in r.runs:
                w.writerow(
                    [t.id, t.experiment, v.seed, t.metric, t.setting, f"{v.value:.4f}",
                     t.published, f"{v.wall_time_s:.2f}", f"{v.train_time_s:.2f}"]
                )  # fmt: skip


def plot(results: Sequence[RowResult], path: Path) -> Path:
    """Ours (mean +- std over seeds) next to published (+- std if known), tolerance bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 4.5))
    xs = list(range(n))
    for x, r in zip(xs, results, strict=True):
        low, high = r.target.band
        high = min(high, 100.0)
        ax.fill_between([x - 0.35, x + 0.35], low, high, color="0.88", lw=0, zorder=0)
    pub = [r.target.published for r in results]
    pub_err = [r.target.published_std or 0.0 for r in results]
    ax.errorbar(
        [x - 0.12 for x in xs], pub, yerr=pub_err, fmt="s", color="tab:gray", capsize=4,
        label="published",
    )  # fmt: skip
    measured = [(x, r) for x, r in zip(xs, results, strict=True) if r.runs]
    if measured:
        ax.errorbar(
            [x + 0.12 for x, _ in measured],
            [r.mean for _, r in measured],
            yerr=[r.std for _, r in measured],
            fmt="o",
            color="tab:blue",
            capsize=4,
            label="ours (mean +- std over seeds)",
        )
        for x, r in measured:
            if not r.within:
                ax.annotate("x", (x + 0.12, r.mean), textcoords="offset points", xytext=(6, -3),
                            color="tab:red")  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xticklabels([r.target.id for r in results], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy / metric (%)")
    ax.set_title("Leaderboard: ours vs published (grey band: tolerance)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
