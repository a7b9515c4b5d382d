"""Official code vs ours on the same offline data: run, record, report.

    CLF_DATA_DIR=../shared/data .venv/bin/python experiments/parity/run_parity.py aux \
        --checkout /path/to/cl-mah --seeds 0 1 2 [--side both|official|ours] [--jobs 2]
    .venv/bin/python experiments/parity/run_parity.py report     # rewrite RESULTS.md tables

Each method's cases (``parity_cases.py``) pair one official command with one of ours. A run
writes its record into ``results/<method>.json`` (final accuracies, FWT, forgetting, the
accuracy lists, wall time); finished (case, side, seed) triples are not repeated (``--force``
repeats them). The official checkouts are never edited: their data is laid out under
``<checkout>/data`` (the path their ``base_path()`` reads) and the few run-time patches are
applied by ``official_launch.py`` (documented there and in RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from parity_cases import METHODS, Case  # noqa: E402

RESULTS_DIR = HERE / "results"
RUNS_DIR = ROOT / "outputs" / "parity"


def data_dir() -> Path:
    return Path(os.environ.get("CLF_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.setdefault("CLF_DATA_DIR", str(data_dir()))
    extra = os.environ.get("PARITY_PYTHONPATH")  # packages only the official code needs
    if extra:
        env["PYTHONPATH"] = extra
    return env


# ------------------------------------------------------------------ records
def record_from_official(path: Path) -> dict[str, Any]:
    """Our common record from ``official_launch.py``'s JSON (Mammoth's lists of lists)."""
    raw = json.loads(path.read_text())
    cil, til = raw["accs"]["class_il"], raw["accs"]["task_il"]
    n = len(cil)
    metrics = raw["official_metrics"]
    return {
        "class_il": statistics.fmean(cil[-1][:n]),
        "task_il": statistics.fmean(til[-1][:n]),
        "fwt_class_il": metrics["fwt"],
        "fwt_task_il": metrics["fwt_task_il"],
        "forgetting_class_il": metrics["forgetting"],
        "acc_lists_class_il": cil,
        "random_init_class_il": raw["random_init"]["class_il"],
        "wall_time_s": raw["wall_time_s"],
    }


def record_from_ours(path: Path) -> dict[str, Any]:
    m = json.loads(path.read_text())
    cil = m["acc_matrix"]["class_il"]
    n = m["n_experiences"]
    return {
        "class_il": m["final_avg_acc"]["class_il"],
        "task_il": m["final_avg_acc"]["task_il"],
        "fwt_class_il": m["fwt"]["class_il"],
        "fwt_task_il": m["fwt"]["task_il"],
        "forgetting_class_il": m["forgetting"]["class_il"],
        # the same shape as the official lists: seen experiences + the next one
        "acc_lists_class_il": [cil[i][: min(i + 2, n)] for i in range(n)],
        "random_init_class_il": m["random_init_acc"]["class_il"],
        "wall_time_s": m["wall_time_s"],
    }


# --------------------------------------------------------------------- runs
def run_official(case: Case, seed: int, checkout: Path) -> dict[str, Any]:
    out = RUNS_DIR / case.method / f"{case.name}-official-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    case.prepare_official(checkout, data_dir())
    result = out / "official.json"
    cmd = [
        sys.executable,
        str(HERE / "official_launch.py"),
        "--out",
        str(result),
        *case.launch_flags,
        "--",
        *case.official_args(seed),
    ]
    with (out / "log.txt").open("w") as log:
        subprocess.run(cmd, check=True, cwd=checkout, env=_env(), stdout=log, stderr=log)
    return record_from_official(result)


def run_ours(case: Case, seed: int) -> dict[str, Any]:
    out = RUNS_DIR / case.method / f"{case.name}-ours-seed{seed}"
    cmd = [
        str(Path(sys.executable).parent / "clf-train"),
        *case.our_overrides(seed),
        f"seed={seed}",
        f"hydra.run.dir={out}",
        "trainer.progress_bar=false",
        "trainer.num_threads=1",
    ]
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, env=_env(), stdout=log, stderr=log)
    return record_from_ours(out / "metrics.json")


def load_results(method: str) -> dict[str, Any]:
    path = RESULTS_DIR / f"{method}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(method: str, results: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{method}.json").write_text(json.dumps(results, indent=1, sort_keys=True))


def run_method(
    method: str,
    checkout: Path | None,
    seeds: list[int],
    sides: list[str],
    jobs: int,
    force: bool,
    only: list[str] | None,
) -> None:
    results = load_results(method)
    todo: list[tuple[Case, str, int]] = []
    for case in METHODS[method]:
        if only and case.name not in only:
            continue
        for side in sides:
            if side == "official" and case.official_args is None:
                continue
            if side == "ours" and case.our_overrides is None:
                continue
            for seed in seeds:
                done = results.get(case.name, {}).get(side, {}).get(str(seed))
                if done is None or force:
                    todo.append((case, side, seed))
    if any(side == "official" for _, side, _ in todo) and checkout is None:
        raise SystemExit(f"--checkout is required to run the official side of '{method}'")
    for setup in dict.fromkeys(case.setup for case, _, _ in todo if case.setup):
        setup()  # once per method, before the parallel runs

    def one(item: tuple[Case, str, int]) -> tuple[Case, str, int, dict[str, Any] | None]:
        case, side, seed = item
        start = time.perf_counter()
        try:
            official = side == "official"
            rec = run_official(case, seed, checkout) if official else run_ours(case, seed)
        except subprocess.CalledProcessError as exc:
            print(f"{method}/{case.name} {side} seed {seed}: FAILED ({exc}); see its log under "
                  f"{RUNS_DIR / case.method}", flush=True)  # fmt: skip
            return case, side, seed, None
        rec["process_s"] = time.perf_counter() - start
        fwt = rec["fwt_class_il"]
        fwt_text = "n/a" if fwt is None else f"{fwt:.2f}"
        print(
            f"{method}/{case.name} {side} seed {seed}: class-IL {rec['class_il']:.2f} "
            f"FWT {fwt_text} ({rec['process_s']:.0f} s)",
            flush=True,
        )
        return case, side, seed, rec

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for case, side, seed, rec in pool.map(one, todo):
            if rec is None:
                continue
            results.setdefault(case.name, {}).setdefault(side, {})[str(seed)] = rec
            save_results(method, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=[*METHODS, "report"])
    parser.add_argument("--checkout", type=Path, help="a checkout of the official repository")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--side", choices=["both", "official", "ours"], default="both")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--only", nargs="+", help="case names to run (default: all)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if args.method == "report":
        from report import write_report

        write_report()
        return
    sides = ["official", "ours"] if args.side == "both" else [args.side]
    checkout = args.checkout.resolve() if args.checkout else None
    run_method(args.method, checkout, args.seeds, sides, args.jobs, args.force, args.only)


if __name__ == "__main__":
    main()
