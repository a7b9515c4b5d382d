"""``PhaseClock`` and ``timings.json``: where a run's wall time goes, by phase."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cl_framework.engine import timing
from cl_framework.engine.timing import IMPORT_PHASE, STARTUP_PHASE, PhaseClock
from cl_framework.train import run
from tests.conftest import compose_config, run_clf_train


class FakeTime:
    """A clock that only moves when told: phase accounting checked without timing anything."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_nested_phases_are_exclusive_and_add_up(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(timing, "time", fake)
    clock = PhaseClock()
    with clock.phase("wscl.after_experience"):
        fake.now += 2.0
        with clock.phase("fit"):
            fake.now += 5.0
        with clock.phase("fit"):
            fake.now += 3.0
        fake.now += 1.0
    with clock.phase("evaluate"):
        fake.now += 0.5
    assert clock.seconds == {
        "wscl.after_experience > fit": pytest.approx(8.0),
        "wscl.after_experience": pytest.approx(3.0),  # 11 s inside, 8 of them in the fits
        "evaluate": pytest.approx(0.5),
    }
    assert clock.calls["wscl.after_experience > fit"] == 2
    report = clock.report(wall_time_s=12.0)
    assert report["phases"][0]["phase"] == "wscl.after_experience > fit"
    assert report["outside_phases_s"] == pytest.approx(0.5)
    restored = PhaseClock()
    restored.load_state_dict(clock.state_dict())  # the checkpointed form (resume keeps them)
    assert restored.seconds == clock.seconds and restored.calls == clock.calls


def test_an_exception_still_closes_the_phase(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(timing, "time", fake)
    clock = PhaseClock()
    with pytest.raises(RuntimeError), clock.phase("train"):
        fake.now += 1.0
        raise RuntimeError("boom")
    with clock.phase("evaluate"):
        fake.now += 1.0
    assert set(clock.seconds) == {"train", "evaluate"}  # not "train > evaluate"


def test_run_writes_timings_with_plugin_hooks_and_capped_batches(tmp_path):
    cfg = compose_config(["strategy=[lwf]", "trainer.epochs=2", "trainer.limit_train_batches=3"])
    run(cfg, tmp_path)
    timings = json.loads((tmp_path / "timings.json").read_text())
    phases = {p["phase"]: p for p in timings["phases"]}
    n = 5  # experiences of the embedded default scenario
    assert phases["train"]["calls"] == n
    assert phases["evaluate"]["calls"] == n + 1  # random init + after every experience
    assert phases["checkpoint"]["calls"] >= n
    assert any(p.startswith("lwf.") for p in phases)  # the plug-in's own hooks are timed
    assert {"build (data, model, buffer)", "outputs (files, plots)"} <= set(phases)
    inside = sum(p["seconds"] for p in timings["phases"])
    assert inside + timings["outside_phases_s"] == pytest.approx(timings["wall_time_s"], abs=0.01)
    batches = timings["train_batches"]
    assert batches["run"] == n * 2 * 3  # capped at 3 per epoch
    assert batches["uncapped"] > batches["run"]


def test_plugin_timed_blocks_are_phases_of_their_own(monkeypatch):
    from types import SimpleNamespace

    from cl_framework.engine.plugin import StrategyPlugin

    fake = FakeTime()
    monkeypatch.setattr(timing, "time", fake)
    clock = PhaseClock()
    plugin = StrategyPlugin(cfg=None)
    plugin.name = "d2l"
    with plugin.timed("dream pool"):  # before setup: a no-op, nothing recorded
        fake.now += 1.0
    plugin._ctx = SimpleNamespace(module=SimpleNamespace(phase_clock=clock))
    with clock.phase("train"):
        fake.now += 2.0
        with plugin.timed("dream pool"):
            fake.now += 5.0
    assert clock.seconds == {"train": pytest.approx(2.0), "train > d2l.dream pool": 5.0}


def test_process_age_counts_from_the_interpreter_start():
    code = (
        "import time; time.sleep(0.5); from cl_framework.engine.timing import process_age_s; "
        "print(process_age_s())"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    age = float(out.stdout)
    assert 0.5 <= age <= time.perf_counter() - started + 0.02  # 10 ms clock ticks


def test_clf_train_timings_cover_the_whole_process(tmp_path):
    # start-up (interpreter, Hydra) and the Lightning import are phases too: together with
    # the run's phases they account for the process' wall time up to interpreter exit
    started = time.perf_counter()
    proc = run_clf_train(tmp_path, "trainer.limit_train_batches=2", "trainer.progress_bar=false")
    process_wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    timings = json.loads((tmp_path / "timings.json").read_text())
    phases = {p["phase"]: p["seconds"] for p in timings["phases"]}
    assert phases[IMPORT_PHASE] > 0.2  # torch alone takes longer than that to import
    assert phases[STARTUP_PHASE] > 0.0
    assert phases[STARTUP_PHASE] + phases[IMPORT_PHASE] < timings["wall_time_s"]
    assert timings["wall_time_s"] <= process_wall
    assert timings["wall_time_s"] >= 0.8 * process_wall  # what is left: interpreter exit
