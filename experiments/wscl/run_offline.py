"""Offline WSCL experiment (issue 9), scaled down to a few CPU-minutes.

ER-ACE vs ER-ACE + WSCL (code-faithful) vs ER-ACE + WSCL (paper mode) on Seq-Fashion-MNIST 32 px
(reduced ResNet-18, buffer 500, MNIST as the dreaming set), seeds 0..2. Scale (CPU, shared
cores): ``max_train_per_class`` / ``max_test_per_class`` per-class subsets, one epoch, held-out
slices scaled with the data, at most ``--max-candidates`` freezing candidates, dream rows per
step = stream rows (``aux_ratio=1``). Writes ``results.json`` and ``RESULTS.md`` here.

    OMP_NUM_THREADS=1 CLF_DATA_DIR=../shared/data .venv/bin/python experiments/wscl/run_offline.py

``--proportional --train-per-class 300 --test-per-class 300 --methods ER-ACE "ER-ACE + WSCL
(code)"`` instead scales every count of the full-size configs by the same factor (the setting
whose sign is compared with the full-size runs in RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: tests.conftest's compose_config

from cl_framework.build import build_runner  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

RUNS = HERE.parents[1] / "outputs" / "wscl_offline"  # run folders (checkpoints, logs)
METHODS = {
    "ER-ACE": "erace-500",
    "ER-ACE + WSCL (code)": "erace-wscl-500",
    "ER-ACE + WSCL (paper)": "erace-wscl-paper-500",
}


def metrics(acc: np.ndarray, rand: np.ndarray) -> dict[str, float]:
    T = acc.shape[0]
    faa = float(acc[-1].mean())
    forg = float(np.mean([acc[j : T - 1, j].max() - acc[-1, j] for j in range(T - 1)]))
    fwt = float(np.mean([acc[j - 1, j] - rand[j] for j in range(1, T)]))
    return {"faa": faa, "forgetting": forg, "fwt": fwt}


def write_report(
    results: dict[str, dict[str, float]],
    scale: str,
    path: Path,
    methods: dict[str, str],
    raw: Path,
) -> None:
    rows = [
        "# WSCL offline experiment (scaled down, CPU)",
        "",
        scale,
        "",
        "| method | seeds | class-IL FAA | forgetting | FWT | wall time | ratio to ER-ACE |",
        "|---|---|---|---|---|---|---|",
    ]
    base = [v["wall_s"] for k, v in results.items() if k.startswith("ER-ACE|")]
    for label in methods:
        runs = [v for k, v in results.items() if k.split("|")[0] == label]
        if not runs:
            rows.append(f"| {label} | 0 | not run | | | | |")
            continue

        def ms(key: str, runs: list = runs) -> str:
            vals = np.array([r[key] for r in runs])
            return f"{vals.mean():.2f} +- {vals.std():.2f}"

        wall = np.mean([r["wall_s"] for r in runs])
        ratio = f"{wall / np.mean(base):.2f}x" if base else "n/a"
        rows.append(
            f"| {label} | {len(runs)} | {ms('faa')} | {ms('forgetting')} | {ms('fwt')} "
            f"| {wall:.0f} s | {ratio} |"
        )
    rows += [
        "",
        "Mean +- std (population) over the seeds listed; accuracies in %. FWT = mean over j >= 1",
        "of acc[j-1][j] - random-init acc[j] (measured after the head assignment of experience j).",
        f"Raw numbers: `{raw.name}`. "
        "Re-run: `python experiments/wscl/run_offline.py` with the same flags (skips",
        "finished (method, seed) pairs).",
    ]
    path.write_text("\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--max-candidates", type=int, default=3)
    ap.add_argument(
        "--proportional",
        action="store_true",
        help="scale every count of the full-size config by train-per-class / 6000 (held-out "
        "slices, MNIST dream images per class, all of them replayed: aux_ratio=dataset) and "
        "keep its candidate limit; writes RESULTS-proportional<N>.md / results-...json",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    methods = {k: METHODS[k] for k in args.methods}
    if args.proportional:
        write_proportional(args, methods)
        return
    scale = (
        f"Seq-Fashion-MNIST 32 px, reduced ResNet-18, buffer 500, 1 epoch, batch 10, lr 0.03; "
        f"{args.train_per_class} training and {args.test_per_class} test images per class "
        f"(seeded subsets); WSCL: held-out val {max(20, 2 * args.train_per_class // 10)} + "
        f"freezing buffer {max(10, 2 * args.train_per_class // 25)} images per experience (the "
        f"reference's 1000 + 200 of 12000, scaled), at most {args.max_candidates} freezing "
        "candidates, MNIST dream rows = stream rows per step (aux_ratio 1); paper mode: STM 500, "
        "1 NREM epoch, plasticity 5 % / 0.05 on |w*grad|, 1 REM epoch. 2 shared CPU cores, "
        "OMP_NUM_THREADS=1."
    )
    out = HERE / "results.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.report_only:
        write_report(results, scale, HERE / "RESULTS.md", methods, out)
        return
    wscl_over = [
        # the reference's 1000 + 200 of 12000 images per experience, scaled
        f"strategy.wscl.val_size={max(20, 2 * args.train_per_class // 10)}",
        f"strategy.wscl.freeze_buffer_size={max(10, 2 * args.train_per_class // 25)}",
        f"strategy.wscl.max_candidates={args.max_candidates}",
        "strategy.wscl.aux_ratio=1.0",
    ]
    for _ in run_missing(args, methods, results, out, RUNS, wscl_over):
        write_report(results, scale, HERE / "RESULTS.md", methods, out)


def run_missing(
    args: argparse.Namespace,
    methods: dict[str, str],
    results: dict[str, dict[str, float]],
    out: Path,
    run_root: Path,
    wscl_overrides: list[str],
):
    """Run every (method, seed) not yet in ``results``, saving ``out`` after each; yields keys."""
    data = os.environ.get("CLF_DATA_DIR", str(HERE.parents[2] / "shared" / "data"))
    for seed in args.seeds:
        for label, exp in methods.items():
            key = f"{label}|{seed}"
            if key in results:
                continue
            over = [
                f"experiment=seq-fashion-mnist/{exp}",
                f"paths.data_dir={data}",
                f"seed={seed}",
                f"scenario.source_options.max_train_per_class={args.train_per_class}",
                f"scenario.source_options.max_test_per_class={args.test_per_class}",
                "trainer.num_threads=1",
            ]
            if "wscl" in exp:
                over += wscl_overrides
            results[key] = run_one(over, run_root / exp / str(seed))
            out.write_text(json.dumps(results, indent=1))
            print(key, results[key], flush=True)
            yield key


def run_one(overrides: list[str], run_dir: Path) -> dict[str, float]:
    """One run in this process: FAA, forgetting, FWT and wall time."""
    start = time.perf_counter()
    res = build_runner(compose_config(overrides), run_dir).run()
    wall = time.perf_counter() - start
    return {**metrics(res.class_il, np.asarray(res.random_init.class_il)), "wall_s": wall}


def write_proportional(args: argparse.Namespace, methods: dict[str, str]) -> None:
    """The full-size configs with every count scaled by the same factor (issue 15, item 5).

    The default scale-down above keeps the dream rows at one per real row and caps the
    candidates, so WSCL trains much more than ER-ACE relative to the full-size runs; here the
    real-to-dream ratio, the held-out fractions and the candidate limit are those of the
    full-size configs, only the number of images per class changes.
    """
    n = args.train_per_class
    factor = n / 6000
    val, freeze = max(2, round(1000 * factor)), max(2, round(200 * factor))
    scale = (
        f"Proportional scale-down of the full-size configs: {n} of 6000 training images per "
        f"class ({factor:.3f}x) and {args.test_per_class} test images per class (seeded subsets) "
        f"of Seq-Fashion-MNIST 32 px; WSCL: held-out val {val} + freezing buffer {freeze} "
        f"images per experience (1000 + 200 of 12000, scaled), MNIST dream set {n} images per "
        "class (32 px RGB), every dream image of the bound classes replayed (aux_ratio=dataset, "
        "as at full size), candidate limit of the config (null). Reduced ResNet-18, buffer "
        "500, 1 epoch, batch 10, lr 0.03; one thread."
    )
    tag = f"proportional{n}"
    out = HERE / f"results-{tag}.json"
    report = HERE / f"RESULTS-{tag}.md"
    results = json.loads(out.read_text()) if out.exists() else {}
    wscl_over = [
        f"strategy.wscl.val_size={val}",
        f"strategy.wscl.freeze_buffer_size={freeze}",
        "strategy.wscl.dataset=resized",
        "+strategy.wscl.options.base=mnist",
        "+strategy.wscl.options.size=32",
        "+strategy.wscl.options.channels=3",
        f"+strategy.wscl.options.max_train_per_class={n}",
        f"+strategy.wscl.options.max_test_per_class={args.test_per_class}",
    ]
    if not args.report_only:
        for _ in run_missing(args, methods, results, out, RUNS / tag, wscl_over):
            pass
    write_report(results, scale, report, methods, out)


if __name__ == "__main__":
    main()
