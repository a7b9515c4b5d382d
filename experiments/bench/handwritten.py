"""DER++ on Seq-MNIST as a minimal hand-written PyTorch loop: the lower bound for overhead.

The same algorithm as ``clf-train experiment=seq-mnist/derpp-500`` (and Mammoth's ``derpp``):

* reservoir buffer (Vitter's algorithm R) of raw uint8 inputs, labels and the logits the
  network produced for them when seen;
* per step: ``CE(f(x), y) + alpha * MSE(f(x_b), z_b) + beta * CE(f(x_b'), y_b')`` with two
  independent draws of ``minibatch_size`` rows without replacement (none while empty);
* SGD step, then the stream rows (+ their pre-step logits) are offered to the buffer;
* evaluation on every experience after each experience.

Usage: ``python experiments/bench/handwritten.py [--out result.json] [--limit N] [--n-exp K]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import (
    N_EXPERIENCES,
    ContenderResult,
    DerppConfig,
    SeqMnist,
    Stopwatch,
    build_mlp,
    evaluate,
    final_avg_acc,
    load_seq_mnist,
    set_threads,
    write_result,
)
from torch import nn

from cl_framework.engine.timing import process_age_s


class Reservoir:
    """Pre-allocated reservoir buffer of (x uint8, y, logits); Python RNG for slot choice."""

    def __init__(self, capacity: int, x_shape: tuple[int, ...], n_logits: int, seed: int) -> None:
        self.capacity = capacity
        self.x = torch.zeros((capacity, *x_shape), dtype=torch.uint8)
        self.y = torch.zeros(capacity, dtype=torch.long)
        self.z = torch.zeros(capacity, n_logits)
        self.seen = 0
        self.size = 0
        self.rng = random.Random(seed)

    def add(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> None:
        slot_of_row: dict[int, int] = {}  # slot -> latest row (sequential semantics)
        for i in range(len(y)):
            n = self.seen + i
            j = n if n < self.capacity else self.rng.randint(0, n)
            if j < self.capacity:
                slot_of_row[j] = i
        self.seen += len(y)
        self.size = min(self.seen, self.capacity)
        if slot_of_row:
            slots = torch.tensor(list(slot_of_row.keys()))
            rows = torch.tensor(list(slot_of_row.values()))
            self.x[slots] = x[rows]
            self.y[slots] = y[rows]
            self.z[slots] = z[rows]

    def sample(self, n: int) -> torch.Tensor:
        return torch.tensor(self.rng.sample(range(self.size), min(n, self.size)))


def train_derpp(
    data: SeqMnist,
    cfg: DerppConfig | None = None,
    seed: int = 0,
    n_exp: int = N_EXPERIENCES,
    limit: int | None = None,
    joint_forward: bool = False,
    eval_clock: Stopwatch | None = None,
) -> tuple[nn.Module, list[list[float]], Stopwatch, int]:
    """Train; returns (model, accuracy matrix, training stopwatch (wall, CPU), steps).

    ``joint_forward``: one forward of the 30 stream + replay rows instead of three forwards of
    10 (the same losses for a network without batch-dependent layers such as this MLP, not for
    batch norm); shows what that restructuring saves. ``eval_clock`` adds up the evaluations.
    """
    cfg = cfg or DerppConfig()
    torch.manual_seed(seed)
    model = build_mlp()
    buffer = Reservoir(cfg.buffer_size, tuple(data.x_train.shape[1:]), 10, seed + 1)
    shuffle = torch.Generator().manual_seed(seed)
    matrix: list[list[float]] = []
    clock = Stopwatch()
    steps = 0
    for i in range(n_exp):
        index = data.train_index(i)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)  # fresh per experience, as ours
        clock.__enter__()
        for _ in range(cfg.epochs):
            order = index[torch.randperm(len(index), generator=shuffle)]
            n_batches = -(-len(order) // cfg.batch_size)
            if limit is not None:
                n_batches = min(n_batches, limit)
            for b in range(n_batches):
                rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x_raw, y = data.x_train[rows], data.y_train[rows]
                if joint_forward and buffer.size > 0:
                    s1, s2 = buffer.sample(cfg.minibatch_size), buffer.sample(cfg.minibatch_size)
                    x = torch.cat([x_raw, buffer.x[s1], buffer.x[s2]]).float().div_(255.0)
                    logits = model(x)
                    n, m = len(y), len(s1)
                    out = logits[:n]
                    loss = (
                        F.cross_entropy(out, y)
                        + cfg.alpha * F.mse_loss(logits[n : n + m], buffer.z[s1])
                        + cfg.beta * F.cross_entropy(logits[n + m :], buffer.y[s2])
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    buffer.add(x_raw, y, out.detach())
                    steps += 1
                    continue
                out = model(x_raw.float().div_(255.0))
                loss = F.cross_entropy(out, y)
                if buffer.size > 0:
                    s = buffer.sample(cfg.minibatch_size)
                    loss = loss + cfg.alpha * F.mse_loss(
                        model(buffer.x[s].float().div_(255.0)), buffer.z[s]
                    )
                    s = buffer.sample(cfg.minibatch_size)
                    loss = loss + cfg.beta * F.cross_entropy(
                        model(buffer.x[s].float().div_(255.0)), buffer.y[s]
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                buffer.add(x_raw, y, out.detach())
                steps += 1
        clock.__exit__()
        if eval_clock is not None:
            eval_clock.__enter__()
        matrix.append(evaluate(model, data, n_exp))
        if eval_clock is not None:
            eval_clock.__exit__()
    return model, matrix, clock, steps


def profile_step_phases(data: SeqMnist, cfg: DerppConfig, steps: int, seed: int = 0) -> dict:
    """Per-step CPU microseconds of each phase of the same loop (thread CPU time).

    Runs experience 0 (fills the buffer) and then times ``steps`` steps of experience 1.
    """
    torch.manual_seed(seed)
    model = build_mlp()
    buffer = Reservoir(cfg.buffer_size, tuple(data.x_train.shape[1:]), 10, seed + 1)
    g = torch.Generator().manual_seed(seed)
    phases = {
        k: Stopwatch(time.thread_time)
        for k in ("data", "forward+loss", "backward", "optimizer", "buffer")
    }
    total = Stopwatch(time.thread_time)
    n_done = 0
    for i in range(2):
        index = data.train_index(i)
        order = index[torch.randperm(len(index), generator=g)]
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        n_batches = -(-len(order) // cfg.batch_size) if i == 0 else steps
        timed = i == 1
        for b in range(n_batches):
            t_step = time.thread_time()
            with phases["data"]:
                rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x_raw, y = data.x_train[rows], data.y_train[rows]
                x = x_raw.float().div_(255.0)
            with phases["buffer"]:
                s1 = buffer.sample(cfg.minibatch_size) if buffer.size else None
                s2 = buffer.sample(cfg.minibatch_size) if buffer.size else None
                if s1 is not None:
                    xb1, zb1 = buffer.x[s1].float().div_(255.0), buffer.z[s1]
                    xb2, yb2 = buffer.x[s2].float().div_(255.0), buffer.y[s2]
            with phases["forward+loss"]:
                out = model(x)
                loss = F.cross_entropy(out, y)
                if s1 is not None:
                    loss = loss + cfg.alpha * F.mse_loss(model(xb1), zb1)
                    loss = loss + cfg.beta * F.cross_entropy(model(xb2), yb2)
            with phases["backward"]:
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with phases["optimizer"]:
                opt.step()
            with phases["buffer"]:
                buffer.add(x_raw, y, out.detach())
            if timed:
                total.cpu += time.thread_time() - t_step
                n_done += 1
            else:  # discard the warm-up experience from the phase totals
                for p in phases.values():
                    p.total = p.cpu = 0.0
    us = {k: 1e6 * p.cpu / n_done for k, p in phases.items()}
    us["step"] = 1e6 * total.cpu / n_done
    return us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the JSON result here (else stdout)")
    parser.add_argument("--limit", type=int, default=None, help="max batches per experience")
    parser.add_argument("--n-exp", type=int, default=N_EXPERIENCES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--joint-forward", action="store_true", help="one forward of stream + replay rows"
    )
    parser.add_argument(
        "--phases", type=int, default=None, help="instead: per-phase us/step over N steps"
    )
    args = parser.parse_args()
    startup = process_age_s()  # interpreter start + imports (torch), before main()
    t0 = time.perf_counter()
    threads = set_threads()
    data = load_seq_mnist()
    data_s = time.perf_counter() - t0
    if args.phases:
        phases = profile_step_phases(data, DerppConfig(), args.phases, seed=args.seed)
        text = json.dumps({**phases, "threads": threads}, indent=1)
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text)
        return
    eval_clock = Stopwatch()
    _, matrix, clock, steps = train_derpp(
        data,
        DerppConfig(),
        seed=args.seed,
        n_exp=args.n_exp,
        limit=args.limit,
        joint_forward=args.joint_forward,
        eval_clock=eval_clock,
    )
    result = ContenderResult(
        name="hand-written-joint" if args.joint_forward else "hand-written",
        final_avg_acc=final_avg_acc(matrix),
        acc_matrix=matrix,
        train_time_s=clock.total,
        train_cpu_s=clock.cpu,
        steps=steps,
        threads=threads,
        wall_time_s=time.perf_counter() - t0,
    )
    result.phases = {
        "start-up": startup,
        "data": data_s,
        "train": clock.total,
        "evaluate": eval_clock.total,
        # model, buffer, optimizers: mostly the first torch.optim.SGD, which imports torch._dynamo
        "set-up": result.wall_time_s - data_s - clock.total - eval_clock.total,
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
