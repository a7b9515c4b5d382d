"""Measurement shim for the ``ours`` child of the benchmark harness (not part of cl_framework).

``run.py`` puts this folder on ``PYTHONPATH`` of the ``clf-train`` child only and sets
``BENCH_FIT_CLOCK``; Python then imports this module at start-up. It wraps
``pytorch_lightning.Trainer.fit`` to add up the wall and process CPU seconds spent in training
fits, and writes them as JSON to ``$BENCH_FIT_CLOCK`` at exit. One wrapper call per fit (one per
epoch), so it does not change what is measured; CPU time is what makes the comparison robust
on a machine that other jobs share (the hand-written and Avalanche children measure it too).

The wrapper is installed when ``clf-train`` itself imports Lightning (an import hook), not
here: importing it at start-up would move that import out of the run's own
``import torch + Lightning`` phase in ``timings.json``.
"""

import atexit
import importlib.abc
import importlib.util
import json
import os
import sys
import time

_path = os.environ.get("BENCH_FIT_CLOCK")
_clock = {"wall_s": 0.0, "cpu_s": 0.0, "fits": 0}


def _wrap_fit(pl) -> None:
    original_fit = pl.Trainer.fit

    def clocked_fit(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original_fit(*args, **kwargs)
        finally:
            _clock["wall_s"] += time.perf_counter() - wall
            _clock["cpu_s"] += time.process_time() - cpu
            _clock["fits"] += 1

    pl.Trainer.fit = clocked_fit


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds ``pytorch_lightning`` like the other finders, then wraps ``Trainer.fit`` once the
    package has executed."""

    def find_spec(self, name, path, target=None):
        if name != "pytorch_lightning":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _wrap_fit(module)

        spec.loader.exec_module = exec_module
        return spec


def _write() -> None:
    with open(_path, "w") as f:
        json.dump(_clock, f)


if _path:
    sys.meta_path.insert(0, _WrapOnImport())
    atexit.register(_write)
