"""SAM (SER) on Seq-Fashion-MNIST 32 px: base vs base + SAM, plus the signature-patch probe.

Runs ``conf/experiment/seq-fashion-mnist/{erace,erace-sam,derpp,derpp-sam}-500`` and the probe
pair ``erace-500-signature`` / ``erace-sam-500-signature`` for each seed, one ``clf-train``
process at a time (``OMP_NUM_THREADS=1``), measures each process's CPU time, reads the
``metrics.json`` files and writes ``experiments/sam/RESULTS.md`` and ``results.json``.

The scale is reduced for a shared 2-core CPU (see RESULTS.md): fixed per-class subsets of the
training and test sets (``--train-per-class``, ``--test-per-class``; the same images for every
seed), one epoch per experience. Finished runs are reused (``metrics.json`` present) unless
``--fresh``.

    CLF_DATA_DIR=../shared/data .venv/bin/python experiments/sam/run_offline.py
    .venv/bin/python experiments/sam/run_offline.py --report-only   # rewrite RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# run name -> base run it is compared with (None: a base). The experiment is the name without
# the "+pretrained" suffix, which adds strategy.sam.checkpoint=<branch pretrained on MNIST>.
RUNS: dict[str, str | None] = {
    "erace-500": None,
    "erace-sam-500": "erace-500",
    "derpp-500": None,
    "derpp-sam-500": "derpp-500",
    "erace-500-signature": None,
    "erace-sam-500-signature": "erace-500-signature",
    "erace-sam-500+pretrained": "erace-500",
    "erace-sam-500-signature+pretrained": "erace-500-signature",
}
PRETRAINED = "+pretrained"


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, seed: int, args: argparse.Namespace) -> dict:
    out = Path(args.runs_dir).resolve() / name / f"seed{seed}"
    metrics_file = out / "metrics.json"
    summary_file = out / "run_summary.json"
    if metrics_file.is_file() and summary_file.is_file() and not args.fresh:
        return json.loads(summary_file.read_text())
    experiment = name.removesuffix(PRETRAINED)
    cmd = [
        str(Path(sys.executable).parent / "clf-train"),
        f"experiment=seq-fashion-mnist/{experiment}",
        f"seed={seed}",
        f"scenario.source_options.max_train_per_class={args.train_per_class}",
        f"scenario.source_options.max_test_per_class={args.test_per_class}",
        f"hydra.run.dir={out}",
        "trainer.progress_bar=false",
        "trainer.checkpoint=false",
    ]
    if "sam" in name:
        cmd.append(f"strategy.sam.cache_dir={Path(args.runs_dir).resolve() / 'saliency_cache'}")
    if name.endswith(PRETRAINED):
        cmd.append(f"strategy.sam.checkpoint={pretrained_branch(args)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cpu0, wall0 = child_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    cpu, wall = child_cpu_seconds() - cpu0, time.perf_counter() - wall0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name} seed {seed} failed ({proc.returncode})")
    log = proc.stdout + proc.stderr
    computed = re.search(r"computed (\d+) spectral_residual maps", log)
    cached = re.search(r"(\d+) spectral_residual maps from cache", log)
    metrics = json.loads(metrics_file.read_text())
    summary = {
        "name": name,
        "seed": seed,
        "class_il": metrics["final_avg_acc"]["class_il"],
        "task_il": metrics["final_avg_acc"]["task_il"],
        "forgetting_class_il": metrics["forgetting"]["class_il"],
        "acc_matrix_class_il": metrics["acc_matrix"]["class_il"],
        "train_time_s": metrics["train_time_s"],
        "wall_time_s": metrics["wall_time_s"],
        "process_cpu_s": cpu,
        "process_wall_s": wall,
        "targets_computed": int(computed.group(1)) if computed else 0,
        "targets_from_cache": int(cached.group(1)) if cached else 0,
    }
    summary_file.write_text(json.dumps(summary, indent=2))
    print(
        f"{name:26s} seed {seed}: class-IL {summary['class_il']:6.2f}  task-IL "
        f"{summary['task_il']:6.2f}  train {summary['train_time_s']:6.1f}s  cpu {cpu:6.1f}s",
        flush=True,
    )
    return summary


def pretrained_branch(args: argparse.Namespace) -> Path:
    """The saliency branch pretrained on MNIST spectral-residual maps (made once)."""
    path = Path(args.runs_dir).resolve() / "saliency_mnist.pt"
    if not path.is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cpu0 = child_cpu_seconds()
        subprocess.run(
            [sys.executable, str(HERE / "pretrain_saliency.py"), f"--out={path}"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        note = path.with_suffix(".json")
        note.write_text(json.dumps({"process_cpu_s": child_cpu_seconds() - cpu0}))
    return path


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def ratio(results: dict[str, list[dict]], name: str, base: str, key: str) -> str:
    pairs = {r["seed"]: r[key] for r in results.get(base, [])}
    ratios = [r[key] / pairs[r["seed"]] for r in results.get(name, []) if r["seed"] in pairs]
    return f"{statistics.mean(ratios):.2f}x" if ratios else "-"


def table(results: dict[str, list[dict]], names: list[str]) -> list[str]:
    lines = [
        "| run | seeds | class-IL FAA | task-IL FAA | class-IL forgetting | train time (s) "
        "| CPU (s) | train-time ratio | CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rows = results.get(name, [])
        base = RUNS[name]
        lines.append(
            f"| {name} | {len(rows)} "
            f"| {mean_std([r['class_il'] for r in rows])} "
            f"| {mean_std([r['task_il'] for r in rows])} "
            f"| {mean_std([r['forgetting_class_il'] for r in rows])} "
            f"| {mean_std([r['train_time_s'] for r in rows])} "
            f"| {mean_std([r['process_cpu_s'] for r in rows])} "
            f"| {ratio(results, name, base, 'train_time_s') if base else '1 (base)'} "
            f"| {ratio(results, name, base, 'process_cpu_s') if base else '1 (base)'} |"
        )
    return lines


def per_seed(results: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| run | seed | class-IL | task-IL | train time (s) | CPU (s) | SR maps computed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in sorted(rows, key=lambda r: r["seed"]):
            lines.append(
                f"| {name} | {r['seed']} | {r['class_il']:.2f} | {r['task_il']:.2f} "
                f"| {r['train_time_s']:.1f} | {r['process_cpu_s']:.1f} "
                f"| {r['targets_computed'] if 'sam' in name else '-'} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--runs-dir", default=str(ROOT / "outputs" / "sam_offline"))
    parser.add_argument("--fresh", action="store_true", help="re-run finished runs")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {}
    if args.report_only:
        results = json.loads((HERE / "results.json").read_text())["runs"]
    else:
        # seeds outermost, so an interrupted sweep still has complete base/SAM pairs
        for seed in args.seeds:
            for name in args.runs:
                results.setdefault(name, []).append(run_one(name, seed, args))
        (HERE / "results.json").write_text(
            json.dumps(
                {
                    "train_per_class": args.train_per_class,
                    "test_per_class": args.test_per_class,
                    "machine": f"{platform.machine()} {platform.processor()}".strip(),
                    "runs": results,
                },
                indent=1,
            )
        )
    main_rows = [
        "erace-500",
        "erace-sam-500",
        "erace-sam-500+pretrained",
        "derpp-500",
        "derpp-sam-500",
    ]
    probe_rows = [
        "erace-500-signature",
        "erace-sam-500-signature",
        "erace-sam-500-signature+pretrained",
    ]
    report = (HERE / "RESULTS.template.md").read_text()
    report = report.replace("MAIN_TABLE", "\n".join(table(results, main_rows)))
    report = report.replace("PROBE_TABLE", "\n".join(table(results, probe_rows)))
    report = report.replace("PER_SEED_TABLE", "\n".join(per_seed(results)))
    (HERE / "RESULTS.md").write_text(report)
    print((HERE / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
