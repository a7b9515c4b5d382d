"""Where the per-step time of ``clf-train experiment=seq-mnist/derpp-500`` goes.

Builds the run exactly as ``clf-train`` does (Hydra compose of the same config, then
``build_runner``), wraps the functions of the hot path with exclusive (self-time) timers, runs
it, and prints the microseconds per training step spent in each component:

* ``Lightning loop``: everything inside ``Trainer.fit`` outside ``CLModule.training_step``
  (fetching the batch, ``transfer_batch_to_device``, hook dispatch, loop bookkeeping);
* ``Lightning wrappers in the step``: ``manual_backward`` / ``LightningOptimizer.step`` /
  ``optimizers()`` minus the torch work they wrap;
* ``Trainer construction``: building one ``pl.Trainer`` per fit (amortised per step);
* the framework's own parts (transform, forward, losses, strategy plug-in, buffer, logging)
  and torch's (autograd backward, ``SGD.step``, ``zero_grad``).

Times are CPU time of the training thread (robust to other jobs on the machine). Each wrapped
call reads the clock twice (about 1 us per reading, about 25 wrapped calls per step); that cost
is measured at the end (``timer_cost_us``) and taken out of the self times
(``self_us_per_step``; uncorrected: ``raw_self_us_per_step``), so that their sum can be
compared with the un-instrumented step time. Names that
do not exist in the engine version under test are skipped, so the script survives refactors.

Usage: ``python experiments/bench/profile_ours.py [--out profile.json] [--limit N]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from bench_common import set_threads


class SelfTimer:
    """Exclusive time per label: a child's time is removed from its parent's.

    Clock: ``time.thread_time`` (CPU time of this thread, where all the work runs with one
    intra-op thread), so that other jobs on a shared machine do not add waiting time to
    whatever function happened to be running; one reading costs about 1 us.
    """

    clock = staticmethod(time.thread_time)

    def __init__(self) -> None:
        self.self_s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.child_calls: dict[str, int] = defaultdict(int)  # wrapped calls made inside a label
        self._stack: list[list[Any]] = []  # [label, t0, child_seconds]
        self._patched: list[tuple[Any, str, Any, bool]] = []  # owner, name, original, own attr

    def wrap(self, label: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [label, self.clock(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = self.clock() - frame[1]
                self._stack.pop()
                self.self_s[label] += elapsed - frame[2]
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed
                    self.child_calls[self._stack[-1][0]] += 1

        return timed

    def calibrate(self, n: int = 20000) -> tuple[float, float]:
        """(seconds a wrapped call adds, seconds of one clock reading), measured here."""
        probe = SelfTimer()
        noop = probe.wrap("noop", lambda: None)
        bare = lambda: None  # noqa: E731
        best_wrapped = best_bare = best_read = float("inf")
        for _ in range(3):
            t = self.clock()
            for _ in range(n):
                noop()
            best_wrapped = min(best_wrapped, (self.clock() - t) / n)
            t = self.clock()
            for _ in range(n):
                bare()
            best_bare = min(best_bare, (self.clock() - t) / n)
            t = self.clock()
            for _ in range(n):
                self.clock()
            best_read = min(best_read, (self.clock() - t) / n)
        return max(best_wrapped - best_bare, 0.0), best_read

    def net_self_s(self, per_call: float, read: float) -> dict[str, float]:
        """Self times less the timers' own cost: about one clock reading lands in the timed
        function, the rest of each wrapped call in its caller's self time."""
        return {
            label: max(
                0.0,
                total - self.calls[label] * read - self.child_calls[label] * (per_call - read),
            )
            for label, total in self.self_s.items()
        }

    def patch(self, owner: Any, name: str, label: str) -> bool:
        fn = getattr(owner, name, None)
        if fn is None:
            return False
        own = name in vars(owner)
        self._patched.append((owner, name, vars(owner).get(name), own))
        setattr(owner, name, self.wrap(label, fn))
        return True

    def restore(self) -> None:
        """Undo every patch (class-level ones would otherwise outlive the profile)."""
        for owner, name, original, own in reversed(self._patched):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._patched.clear()


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import cl_framework

    conf = Path(cl_framework.__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def profile(overrides: list[str], instrument: bool = True) -> dict[str, Any]:
    """Run the config; with ``instrument``, return per-step microseconds per component."""
    import pytorch_lightning as pl

    cfg = compose(overrides)
    timer = SelfTimer()
    fit_clock = {"wall": 0.0, "cpu": 0.0}
    original_fit = pl.Trainer.fit

    def clocked_fit(*args: Any, **kwargs: Any) -> Any:  # one call per epoch: negligible cost
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original_fit(*args, **kwargs)
        finally:
            fit_clock["wall"] += time.perf_counter() - wall
            fit_clock["cpu"] += time.process_time() - cpu

    pl.Trainer.fit = clocked_fit
    try:
        return _run(cfg, timer, fit_clock, instrument)
    finally:
        timer.restore()
        pl.Trainer.fit = original_fit


def _run(cfg: Any, timer: SelfTimer, fit_clock: dict, instrument: bool) -> dict[str, Any]:
    import pytorch_lightning as pl
    from pytorch_lightning.core.optimizer import LightningOptimizer

    from cl_framework.build import build_runner

    with tempfile.TemporaryDirectory() as out:
        runner = build_runner(cfg, out)
        module = runner.module
        if instrument:
            timer.patch(pl.Trainer, "fit", "Lightning loop")  # self time = loop overhead
            timer.patch(runner, "make_trainer", "Trainer construction")
            timer.patch(module, "training_step", "CLModule.training_step (own code)")
            timer.patch(module.transform, "train", "transform (uint8->float)")
            timer.patch(module, "run_forward", "forward (run_forward + taps)")
            timer.patch(module.backbone, "forward", "forward (torch nn)")
            timer.patch(module.head, "forward", "forward (torch nn)")
            timer.patch(module, "classification_loss", "loss: stream CE")
            for plugin in module.plugins:
                timer.patch(plugin, "loss_terms", f"strategy {plugin.name}.loss_terms")
                timer.patch(plugin, "draw", f"strategy {plugin.name}.draw")
            if module.buffer is not None:
                timer.patch(module.buffer, "sample", "buffer.sample")
                timer.patch(module.buffer, "add", "buffer.add")
            timer.patch(module, "manual_backward", "Lightning wrappers in the step")
            timer.patch(module, "optimizers", "Lightning wrappers in the step")
            timer.patch(LightningOptimizer, "step", "Lightning wrappers in the step")
            timer.patch(torch.Tensor, "backward", "backward (torch autograd)")
            timer.patch(torch.optim.SGD, "step", "optimizer step (torch SGD)")
            timer.patch(torch.optim.Optimizer, "zero_grad", "zero_grad (torch)")
            timer.patch(module, "_record_losses", "loss logging")
            timer.patch(runner, "_after_step", "runner step hook")
            timer.patch(runner, "evaluate", "evaluation")
        start = time.perf_counter()
        result = runner.run()
        wall = time.perf_counter() - start
    steps = int(module.step_count)
    per_call, read = timer.calibrate()
    net = timer.net_self_s(per_call, read)
    per_step = {k: 1e6 * v / max(steps, 1) for k, v in net.items()}
    raw_per_step = {k: 1e6 * v / max(steps, 1) for k, v in timer.self_s.items()}
    return {
        "steps": steps,
        "train_time_s": result.train_time_s,
        "us_per_step_train": 1e6 * result.train_time_s / max(steps, 1),
        "wall_s": wall,
        "fit_wall_s": fit_clock["wall"],
        "fit_cpu_s": fit_clock["cpu"],
        "us_per_step_fit_cpu": 1e6 * fit_clock["cpu"] / max(steps, 1),
        "final_avg_acc": float(result.class_il[-1].mean()),
        "self_us_per_step": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
        "raw_self_us_per_step": dict(sorted(raw_per_step.items(), key=lambda kv: -kv[1])),
        "timer_cost_us": {"per_wrapped_call": 1e6 * per_call, "per_clock_read": 1e6 * read},
        "calls": dict(timer.calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--limit", type=int, default=None, help="max batches per experience")
    parser.add_argument("--no-instrument", action="store_true", help="plain timing only")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    threads = set_threads()
    import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import: override after)

    logging.getLogger("cl_framework").setLevel(logging.WARNING)
    for name in ("pytorch_lightning", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    overrides = ["experiment=seq-mnist/derpp-500", "trainer.progress_bar=false"]
    if args.limit is not None:
        overrides.append(f"trainer.limit_train_batches={args.limit}")
    overrides += args.overrides
    res = profile(overrides, instrument=not args.no_instrument)
    res["threads"] = threads
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    sys.exit(main())
