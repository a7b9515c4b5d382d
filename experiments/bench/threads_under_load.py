"""Threads on a loaded machine: DER++-500 Seq-MNIST whole process with torch's default of one
thread per core vs ``trainer.num_threads`` = null (auto, 1 thread for this MLP), while other
processes keep every core busy. Interleaved, median of the repeats; appends to THREADS.md.

    .venv/bin/python experiments/bench/threads_under_load.py [--repeats 3] [--load 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "cl_framework.train", "experiment=seq-mnist/derpp-500"]


def spin(stop: mp.Event) -> None:  # one busy core, as another user's job would be
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def timed_run(threads: str, limit: int | None) -> float:
    extra = [f"trainer.num_threads={threads}", "trainer.progress_bar=false"]
    if limit:
        extra.append(f"trainer.limit_train_batches={limit}")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [*COMMAND, *extra, f"hydra.run.dir={out}"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes")
    parser.add_argument("--limit", type=int, default=None, help="trainer.limit_train_batches")
    args = parser.parse_args()
    settings = {"torch default (2 threads here)": str(os.cpu_count()), "auto (null)": "null"}
    times: dict[str, list[float]] = {k: [] for k in settings}
    stop = mp.Event()
    load = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    try:
        for _ in range(args.repeats):
            for name, threads in settings.items():
                times[name].append(timed_run(threads, args.limit))
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    finally:
        stop.set()
        for p in load:
            p.join()
    rows = [
        f"| {name} | {statistics.median(t):.1f} | {' / '.join(f'{v:.1f}' for v in t)} |"
        for name, t in times.items()
    ]
    ratio = statistics.median(times["torch default (2 threads here)"]) / statistics.median(
        times["auto (null)"]
    )
    text = "\n".join(
        [
            "",
            f"### Threads under load ({args.load} busy processes on {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d')})",
            "",
            "`python experiments/bench/threads_under_load.py"
            + (f" --limit {args.limit}" if args.limit else "")
            + f"`: whole-process DER++-500 Seq-MNIST, median of {args.repeats}, interleaved.",
            "",
            "| trainer.num_threads | median s | runs s |",
            "|---|---|---|",
            *rows,
            "",
            f"torch default / auto = {ratio:.1f}x",
            "",
        ]
    )
    print(text)
    with open(ROOT / "experiments" / "bench" / "THREADS.md", "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
