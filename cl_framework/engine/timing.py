"""``PhaseClock``: where a run's wall time goes, by phase, written to ``timings.json``.

Full-size method runs take tens of minutes on a CPU; a researcher deciding what to cut needs to
know whether that time is training, the evaluations on every test set, a plug-in's candidate
fits (WSCL) or its dreams (Dream2Learn). The runner and the plug-in dispatcher open phases; a
phase opened inside another is recorded under a path (``wscl.after_experience > fit``) and its
time is *not* counted again in the outer phase, so the exclusive seconds add up to the time
spent inside phases. Per-step work of plug-ins (SAM's saliency branch, TwF's teacher) is part of
``train``; ``experiments/profile_methods.py`` splits it further with cProfile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: How nested phase names are joined in the records.
SEPARATOR = " > "

#: ``clf-train``'s phases before the run is built (``timings.json``; see ``train.hydra_main``).
STARTUP_PHASE = "start-up (interpreter, CLI imports, Hydra config)"
IMPORT_PHASE = "import torch + Lightning"


def process_age_s() -> float | None:
    """Seconds since this process was started (Linux ``/proc``; 10 ms resolution), or None
    where the start time is unknown. It lets ``timings.json`` cover the interpreter start and
    the imports, which happen before any clock of ours exists."""
    try:
        stat = Path("/proc/self/stat").read_text()
        started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, now - started)


class PhaseClock:
    """Exclusive wall seconds and call counts per phase path (checkpointed with the run)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[object]] = []  # [path, start, seconds of nested phases]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block as ``name`` (nested under the phase already open, if any)."""
        path = f"{self._stack[-1][0]}{SEPARATOR}{name}" if self._stack else name
        frame: list[object] = [path, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - float(frame[1])  # type: ignore[arg-type]
            self._record(path, total - float(frame[2]))  # type: ignore[arg-type]
            if self._stack:
                self._stack[-1][2] = float(self._stack[-1][2]) + total  # type: ignore[arg-type]

    def add(self, name: str, seconds: float) -> None:
        """Record a top-level phase timed elsewhere (building the run, before the clock)."""
        self._record(name, seconds)

    def _record(self, path: str, seconds: float) -> None:
        self.seconds[path] = self.seconds.get(path, 0.0) + seconds
        self.calls[path] = self.calls.get(path, 0) + 1

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {
            "seconds": dict(self.seconds),
            "calls": {k: float(v) for k, v in self.calls.items()},
        }

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        self.seconds = {k: float(v) for k, v in state.get("seconds", {}).items()}
        self.calls = {k: int(v) for k, v in state.get("calls", {}).items()}

    def report(self, wall_time_s: float) -> dict[str, object]:
        """``timings.json``: phases by exclusive seconds, largest first, with their share."""
        inside = sum(self.seconds.values())
        phases = [
            {
                "phase": path,
                "seconds": round(sec, 3),
                "calls": self.calls.get(path, 0),
                "share_of_wall": round(sec / wall_time_s, 4) if wall_time_s > 0 else None,
            }
            for path, sec in sorted(self.seconds.items(), key=lambda kv: -kv[1])
        ]
        return {
            "wall_time_s": round(wall_time_s, 3),
            "outside_phases_s": round(max(0.0, wall_time_s - inside), 3),
            "phases": phases,
        }

    def summary_line(self, top: int = 5) -> str:
        """The largest phases on one line, for the end-of-run log."""
        items = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]
        return " | ".join(f"{path} {sec:.1f}s" for path, sec in items)
