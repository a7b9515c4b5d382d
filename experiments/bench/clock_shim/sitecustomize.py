"""Measurement shim for the ``ours`` child of the benchmark harness (not part of cl_framework).

``run.py`` puts this folder on ``PYTHONPATH`` of the ``clf-train`` child only and sets
``BENCH_FIT_CLOCK``; Python then imports this module at start-up. It wraps
``pytorch_lightning.Trainer.fit`` to add up the wall and process CPU seconds spent in training
fits, and writes them as JSON to ``$BENCH_FIT_CLOCK`` at exit. One wrapper call per fit (one per
epoch), so it does not change what is measured; CPU time is what makes the comparison robust
on a machine that other jobs share (the hand-written and Avalanche children measure it too).
"""

import atexit
import json
import os
import time

_path = os.environ.get("BENCH_FIT_CLOCK")
if _path:
    import pytorch_lightning as _pl

    _original_fit = _pl.Trainer.fit
    _clock = {"wall_s": 0.0, "cpu_s": 0.0, "fits": 0}

    def _clocked_fit(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return _original_fit(*args, **kwargs)
        finally:
            _clock["wall_s"] += time.perf_counter() - wall
            _clock["cpu_s"] += time.process_time() - cpu
            _clock["fits"] += 1

    def _write() -> None:
        with open(_path, "w") as f:
            json.dump(_clock, f)

    _pl.Trainer.fit = _clocked_fit
    atexit.register(_write)
