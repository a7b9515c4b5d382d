"""Micro-benchmark of ``cl_framework.buffer.ReplayBuffer``: insert and sample cost vs size.

For every capacity (200 ... 50,000) and batch size (10, 32, 128), the buffer is first filled
(steady state: every ``add`` runs the reservoir draw over a full buffer), then ``add`` of a
DER++-shaped batch (uint8 1x28x28 inputs, int64 labels and task ids, 10 float logits) and
``sample`` of ``batch`` rows are timed. O(batch) cost means the time per call does not grow with
the capacity; the ``cap 50k / cap 200`` column says how far from that each operation is.

Usage: ``python experiments/bench/micro_buffer.py [--out micro.json] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import set_threads

CAPACITIES = (200, 500, 2000, 10_000, 50_000)
BATCHES = (10, 32, 128)


def _rows(batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "x": torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=g),
        "y": torch.randint(0, 10, (batch,), generator=g),
        "t": torch.zeros(batch, dtype=torch.long),
        "logits": torch.randn(batch, 10, generator=g),
    }


def _time_per_call(fn: Any, min_time_s: float, min_calls: int = 20) -> float:
    """Median-of-3 of the mean CPU seconds per call over runs of ``min_time_s / 3`` each.

    Process CPU time, not wall time: other jobs on the machine do not inflate it (with one
    intra-op thread all the work is on this process's calling thread).
    """
    fn()  # warm-up (allocations, lazy init)
    results = []
    for _ in range(3):
        calls = 0
        start = time.process_time()
        while True:
            fn()
            calls += 1
            elapsed = time.process_time() - start
            if calls >= min_calls and elapsed >= min_time_s / 3:
                break
        results.append(elapsed / calls)
    return sorted(results)[1]


def bench(
    capacities: tuple[int, ...] = CAPACITIES,
    batches: tuple[int, ...] = BATCHES,
    min_time_s: float = 0.15,
    policy: str = "reservoir",
) -> list[dict[str, Any]]:
    from cl_framework.buffer import ReplayBuffer

    g = torch.Generator().manual_seed(0)
    rows = []
    for capacity in capacities:
        for batch in batches:
            buffer = ReplayBuffer(capacity, policy=policy, seed=0)
            fill = _rows(max(batch, 1000), g)
            while buffer.num_seen < 2 * capacity:  # full, and past the filling phase
                buffer.add(**fill)
            data = _rows(batch, g)
            add_s = _time_per_call(lambda b=buffer, d=data: b.add(**d), min_time_s)
            sample_s = _time_per_call(
                lambda b=buffer, n=batch: b.sample(n, fields=["x", "y", "logits"]), min_time_s
            )
            rows.append(
                {
                    "policy": policy,
                    "capacity": capacity,
                    "batch": batch,
                    "add_us": 1e6 * add_s,
                    "sample_us": 1e6 * sample_s,
                    "add_rows_per_s": batch / add_s,
                    "sample_rows_per_s": batch / sample_s,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="2 capacities, 1 batch, short")
    parser.add_argument("--policy", default="reservoir")
    args = parser.parse_args()
    threads = set_threads()
    if args.quick:
        rows = bench((200, 10_000), (10,), min_time_s=0.03, policy=args.policy)
    else:
        rows = bench(policy=args.policy)
    text = json.dumps({"threads": threads, "rows": rows}, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
