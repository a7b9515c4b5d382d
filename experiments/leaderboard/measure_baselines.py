"""Measure the DER-paper baselines on the MNIST benchmarks, without published targets.

The DER paper's Table 2 values for most of these rows could not be read in this environment
(see ``targets.yaml``), so they cannot enter ``clf-leaderboard``'s target table. This script
runs the same configs through the leaderboard's resumable runner and writes what we measure,
per benchmark group, to ``experiments/leaderboard/MEASURED.md`` (and ``measured.json``), ready
for a published column once the numbers are checked against the paper.

    CLF_DATA_DIR=../shared/data python experiments/leaderboard/measure_baselines.py \
        --group seq-mnist --seeds 3 [--jobs 2] [--with-slow]

Runs land in ``outputs/leaderboard/runs/<experiment>/seed<s>`` (shared with clf-leaderboard);
a finished run is never repeated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from cl_framework.leaderboard.aggregate import machine
from cl_framework.leaderboard.launch import plan_runs, run_local

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "experiments" / "leaderboard"
CONF = ROOT / "conf" / "experiment"
#: configs too slow for 2 CPU cores: GEM, one backward per memory experience each step; GSS on
#: the 20-domain benchmarks, one backward per candidate and memory row (~2.4M per run); GDumb
#: at 5120, 256 epochs over the whole memory at every experience end (~400k steps)
SLOW = {
    "perm-mnist/gem-5120",
    "rot-mnist/gem-5120",
    "seq-mnist/gem-5120",
    "seq-mnist/gdumb-5120",
    *(f"{group}/gss-{size}" for group in ("perm-mnist", "rot-mnist") for size in (200, 500, 5120)),
}
GROUPS = {
    "seq-mnist": "class-IL and task-IL, 5 x 2 classes, batch 10, 1 epoch",
    "perm-mnist": "domain-IL, 20 permutations, batch 128, 1 epoch",
    "rot-mnist": "domain-IL, 20 rotations, batch 128, 1 epoch",
    "mnist-360": "general CL, one ordered stream of rotating digit pairs, batch per method",
}


def experiments_of(group: str, with_slow: bool) -> list[str]:
    names = sorted(
        p.stem for p in (CONF / group).glob("*.yaml") if p.stem[0] != "_" and "d2l" not in p.stem
    )
    exps = [f"{group}/{n}" for n in names]
    return [e for e in exps if with_slow or e not in SLOW]


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(runs_dir: Path, exps: list[str], previous: list[dict] | None = None) -> list[dict]:
    """Every finished seed of each experiment: the runs on disk (also those of earlier, larger
    ``--seeds``) plus the per-seed records of the previous ``measured.json``, so runs made on
    another machine (or whose run directories were deleted) are never lost; a seed on disk
    replaces its earlier record."""
    before = {row["experiment"]: row for row in previous or []}
    rows = []
    for exp in exps:
        old = before.get(exp, {})
        vals = {
            r["seed"]: (r["class_il"], r["task_il"], r.get("wall_s", old.get("wall_s", 0.0)))
            for r in old.get("per_seed", [])
        }
        setting = old.get("setting", "class-il")
        for seed_dir in (runs_dir / exp).glob("seed*"):
            path = seed_dir / "metrics.json"
            if path.is_file():
                m = json.loads(path.read_text())
                fa = m["final_avg_acc"]
                vals[int(seed_dir.name[4:])] = (fa["class_il"], fa["task_il"], m["wall_time_s"])
                setting = m.get("setting", "class-il")
        if not vals:
            continue
        seeds = sorted(vals)
        rows.append(
            {
                "experiment": exp,
                "setting": setting,
                "n": len(seeds),
                "class_il": mean_std([vals[s][0] for s in seeds]),
                "task_il": mean_std([vals[s][1] for s in seeds]),
                "wall_s": statistics.mean(vals[s][2] for s in seeds),
                "per_seed": [
                    {"seed": s, "class_il": vals[s][0], "task_il": vals[s][1], "wall_s": vals[s][2]}
                    for s in seeds
                ],
            }
        )
    return rows


def markdown(results: dict[str, list[dict]]) -> str:
    lines = [
        "# Measured baselines on the MNIST benchmarks (no published column yet)",
        "",
        "Written by `experiments/leaderboard/measure_baselines.py`. Mean +- sample std over the",
        "seeds listed; final average accuracy in %. Mammoth's best args (DER paper protocol).",
        "These are **our** numbers only: the DER paper's Table 2 values for these rows could not",
        "be read here, so nothing below is checked against a publication.",
        f"Machine: {machine()}.",
        "Wall times were mostly measured with two runs sharing the 2 cores (sometimes more), so",
        "a run alone is up to ~2x faster; a group is runnable on its own with `--group`.",
        "",
    ]
    for group, rows in results.items():
        lines += [f"## {group} ({GROUPS[group]})", ""]
        if not rows:
            lines += [f"Not measured yet: `--group {group}`.", ""]
            continue
        lines += ["| config | seeds | class-IL | task-IL | wall s / run |", "|---|---|---|---|---|"]
        for r in rows:
            c, t = r["class_il"], r["task_il"]
            # a task-IL run (PNN) trains and picks columns with the task identity
            cil = (
                "n/a (task-IL run)"
                if r.get("setting") == "task-il"
                else f"{c[0]:.2f} +- {c[1]:.2f}"
            )
            lines.append(
                f"| `{r['experiment']}` | {r['n']} | {cil} | "
                f"{t[0]:.2f} +- {t[1]:.2f} | {r['wall_s']:.0f} |"
            )
        total = sum(r["wall_s"] for r in rows) / 60
        lines += ["", f"One seed of the {len(rows)} configs above: {total:.0f} min of runs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--group", action="append", choices=sorted(GROUPS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument(
        "--with-slow",
        action="store_true",
        help="also the SLOW configs (GEM and GDumb at 5120, GSS on P-/R-MNIST)",
    )
    p.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "leaderboard" / "runs")
    p.add_argument("--report-only", action="store_true", help="aggregate, run nothing")
    args = p.parse_args(argv)
    groups = args.group or sorted(GROUPS)
    seeds = list(range(args.seeds))
    json_path = OUT / "measured.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    for group in groups:
        exps = experiments_of(group, args.with_slow)
        if not args.report_only:
            run_local(plan_runs(exps, seeds, args.runs_dir), jobs=args.jobs)
        results[group] = summarise(args.runs_dir, exps, results.get(group, []))
    results = {g: results[g] for g in GROUPS if g in results}
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "MEASURED.md").write_text(markdown(results))
    print(f"wrote {OUT / 'MEASURED.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
