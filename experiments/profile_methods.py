"""Where the time of the full-size method runs goes, and what a full run would cost.

For each of the five methods (and its rehearsal base) this runs the full-size config on the
full data with ``trainer.limit_train_batches=L`` (every evaluation still covers every test set,
every plug-in phase still runs), reads the run's ``timings.json`` (:class:`PhaseClock`) and
scales the phases that grow with the number of training batches (``train`` and every ``fit``
a plug-in starts) by ``uncapped / run`` batches; the other phases (evaluations, candidate
selection outside fits, dream generation, saliency targets, checkpoints, outputs) are taken as
measured. A second, shorter run under ``cProfile`` splits the training phase by function
(cumulative time of the framework's functions, so nested entries overlap).

Usage::

    CLF_DATA_DIR=../shared/data python experiments/profile_methods.py [--only sam twf]
        [--out experiments/profile/RESULTS.md]

Writes ``experiments/profile/results.json`` and the markdown tables of ``RESULTS.md`` (the text
under "Reading" is kept). Runs one process at a time with one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_framework.engine.timing import SEPARATOR

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "experiments" / "profile"
BIN = Path(sys.executable).parent
OUTPUTS = ROOT / "outputs" / "profile"

#: Engine functions that wrap the whole training step: their cumulative time says nothing.
ENGINE_ENTRY_POINTS = frozenset(
    {
        "run",
        "_run_experience",
        "_train_experience",
        "_fit_epoch",
        "training_step",
        "_training_step_chunk",
        "_train_one",
        "call_plugins",
        "fold_plugins",
        "phase",
    }
)

#: Phases whose cost grows with the training batches (scaled to the uncapped run).
SCALED_SEGMENTS = ("train", "fit")


@dataclass(frozen=True)
class Profiled:
    """One full-size config profiled with ``limit`` batches per epoch (``cprofile_limit`` under
    cProfile)."""

    method: str
    experiment: str
    base: str
    limit: int
    cprofile_limit: int
    overrides: tuple[str, ...] = field(default_factory=tuple)
    base_overrides: tuple[str, ...] = field(default_factory=tuple)
    needs: str = ""  # a setup step: "generator" | "sibling"


SIBLING = ROOT / "outputs" / "parity" / "twf" / "mnist-resnet18-reduced.pt"
GENERATOR = OUTPUTS / "generators" / "generator-fashion-mnist-profile.pt"

METHODS = (
    Profiled("sam", "seq-fashion-mnist/erace-sam-500", "seq-fashion-mnist/erace-500", 60, 20),
    Profiled("auxiliary", "future-seq-mnist/derpp-aux-500", "future-seq-mnist/derpp-500", 300, 100),
    Profiled("wscl", "seq-fashion-mnist/erace-wscl-500", "seq-fashion-mnist/erace-500", 30, 10),
    Profiled(
        "d2l",
        "seq-mnist/erace-d2l-500",
        "seq-mnist/erace-500",
        300,
        100,
        (f"strategy.d2l.generator.path={GENERATOR}",),
        needs="generator",
    ),
    Profiled(
        "twf",
        "seq-fashion-mnist/twf-500",
        "seq-fashion-mnist/derpp-500-pretrained",
        20,
        8,
        (f"strategy.twf.sibling.path={SIBLING}",),
        (f"strategy.pretrained.path={SIBLING}",),
        "sibling",
    ),
)


def env() -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    e.setdefault("CLF_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return e


def ensure_setup(kind: str) -> None:
    """The generator (D2L) or the sibling (TwF) the configs read, made small if missing."""
    if kind == "generator" and not GENERATOR.exists():
        # dream cost depends on the generator's architecture, not on how well it was trained
        cmd = [
            str(BIN / "clf-pretrain-generator"),
            "experiment=pretrain/generator-fashion-mnist",
            "training.epochs=1",
            "training.max_train_per_class=300",
            f"output={GENERATOR}",
        ]
        subprocess.run(cmd, check=True, cwd=ROOT, env=env())
    if kind == "sibling" and not SIBLING.exists():
        raise SystemExit(
            f"{SIBLING} is missing: make it with `python experiments/parity/run_parity.py twf "
            "--setup-only` (the TwF parity sibling, clf-pretrain on MNIST)"
        )


def run_one(
    name: str, experiment: str, overrides: tuple[str, ...], limit: int, cprofile: bool
) -> dict[str, Any]:
    """One capped run (``clf-train``, or this script's cProfile child); its timings.json."""
    out = OUTPUTS / "runs" / (name + ("-cprofile" if cprofile else ""))
    args = [f"experiment={experiment}", *overrides, f"trainer.limit_train_batches={limit}"]
    args += ["trainer.progress_bar=false", "trainer.num_threads=1"]
    if cprofile:
        cmd = [sys.executable, __file__, "--cprofile-child", str(out), *args]
    else:
        cmd = [str(BIN / "clf-train"), *args, f"hydra.run.dir={out}"]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (out / "run.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env(), stdout=log, stderr=log)
    process_s = time.perf_counter() - start
    if cprofile:
        return {"run_dir": str(out)}
    timings = json.loads((out / "timings.json").read_text())
    timings["process_wall_s"] = round(process_s, 2)
    timings["run_dir"] = str(out)
    return timings


def cprofile_child(out: Path, overrides: list[str]) -> None:
    """Build the run as clf-train does and profile ``runner.run()`` (every experience)."""
    import cProfile

    from hydra import compose, initialize_config_dir

    from cl_framework.build import build_runner

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    runner = build_runner(cfg, out)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        runner.run()  # training, plug-in phases and evaluations; not imports or outputs
    finally:
        profiler.disable()
    profiler.dump_stats(str(out / "profile.pstats"))


def scales(path: str) -> bool:
    """A phase's exclusive time grows with the batches when the phase *is* a training loop
    (``train``, a plug-in's ``fit``); phases nested in one (a dream pool made once per
    experience, epoch hooks) are per-experience costs."""
    return path.split(SEPARATOR)[-1] in SCALED_SEGMENTS


def full_estimate(timings: dict[str, Any]) -> dict[str, Any]:
    """Phases scaled to the uncapped run, and the estimated whole-run seconds."""
    tb = timings["train_batches"]
    factor = tb["uncapped"] / max(1, tb["run"])
    rows = []
    for p in timings["phases"]:
        est = p["seconds"] * (factor if scales(p["phase"]) else 1.0)
        rows.append({**p, "scaled": scales(p["phase"]), "full_s": round(est, 1)})
    start_up = timings["process_wall_s"] - timings["wall_time_s"]  # imports, config, exit
    outside = timings["outside_phases_s"]
    for label, sec in (("start-up (imports, config, exit)", start_up), ("other", outside)):
        rows.append(
            {
                "phase": label,
                "seconds": round(sec, 2),
                "calls": 1,
                "scaled": False,
                "full_s": round(sec, 1),
            }
        )
    total = sum(r["full_s"] for r in rows)
    for r in rows:
        r["full_share"] = round(r["full_s"] / total, 4)
    return {
        "factor": round(factor, 2),
        "start_up_s": round(start_up, 2),
        "full_total_s": round(total, 1),
        "phases": rows,
    }


def component(file: str, fn: str) -> str:
    """Who owns a function's self time: a framework module, Lightning, torch, or other."""
    if file == "~":
        return "torch / C built-ins (ops, autograd)" if "torch" in fn or "method" in fn else "other"
    if "cl_framework/" in file:
        parts = file.split("cl_framework/")[-1].removesuffix(".py").split("/")
        return "cl_framework/" + "/".join(parts[:2])
    for package in ("pytorch_lightning", "lightning_fabric", "torch", "numpy"):
        if f"/{package}/" in file:
            return package + (" (python)" if package == "torch" else "")
    return "other python"


def profile_tables(pstats_path: Path, n: int = 12) -> dict[str, Any]:
    """Profile of ``runner.run()``: self time by owner (adds up), and the framework's functions
    by cumulative time (what a plug-in's work costs; nested entries overlap)."""
    raw = pstats.Stats(str(pstats_path)).stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())
    by_component: dict[str, float] = {}
    functions = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in raw.items():
        key = component(file, fn)
        by_component[key] = by_component.get(key, 0.0) + tt
        if "cl_framework/" in file and not ("/engine/" in file and fn in ENGINE_ENTRY_POINTS):
            short = file.split("cl_framework/")[-1]
            functions.append({"function": f"{short}:{line} {fn}", "calls": nc, "cumulative_s": ct})
    functions.sort(key=lambda r: -r["cumulative_s"])
    for r in functions:
        r["share_of_train"] = round(r["cumulative_s"] / total, 3) if total else None
        r["cumulative_s"] = round(r["cumulative_s"], 2)
    components = [
        {"component": k, "self_s": round(v, 2), "share": round(v / total, 3) if total else None}
        for k, v in sorted(by_component.items(), key=lambda kv: -kv[1])
    ]
    return {"total_s": round(total, 2), "components": components, "functions": functions[:n]}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| method | run | batches run / full | measured wall (s) | est. full run (s) | "
        "top phases of the full run (share) |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        for role in ("base", "method"):
            t = r[role]
            est = t["estimate"]
            top = sorted(est["phases"], key=lambda p: -p["full_s"])[:4]
            top_text = "; ".join(f"{p['phase']} {100 * p['full_share']:.0f}%" for p in top)
            lines.append(
                f"| {method} | `{t['experiment']}` | {t['train_batches']['run']} / "
                f"{t['train_batches']['uncapped']} | {t['process_wall_s']:.0f} | "
                f"{est['full_total_s']:.0f} | {top_text} |"
            )
    for method, r in results.items():
        t = r["method"]
        lines += [
            "",
            f"### {method}: `{t['experiment']}`",
            "",
            f"Scaling factor for training phases: {t['estimate']['factor']}x; start-up "
            f"(imports, config) {t['estimate']['start_up_s']} s.",
            "",
            "| phase | calls | measured (s) | scaled | est. full (s) | share of full |",
            "|---|---|---|---|---|---|",
        ]
        for p in t["estimate"]["phases"]:
            lines.append(
                f"| {p['phase']} | {p['calls']} | {p['seconds']:.2f} | "
                f"{'x' if p['scaled'] else ''} | {p['full_s']:.1f} | "
                f"{100 * p['full_share']:.1f}% |"
            )
        prof = r.get("profile")
        if prof:
            lines += [
                "",
                f"`runner.run()` under cProfile ({prof['total_s']} s profiled, a shorter run; "
                "the profiler slows Python-heavy code more than torch ops): self time by owner,",
                "",
                "| owner | self (s) | share |",
                "|---|---|---|",
            ]
            for c in prof["components"][:8]:
                lines.append(f"| {c['component']} | {c['self_s']} | {100 * c['share']:.0f}% |")
            lines += [
                "",
                "and the framework's functions by cumulative time (nested entries overlap):",
                "",
                "| function | calls | cumulative (s) | share of the run |",
                "|---|---|---|---|",
            ]
            for f in prof["functions"]:
                share = f"{100 * f['share_of_train']:.0f}%" if f["share_of_train"] else ""
                lines.append(
                    f"| `{f['function']}` | {f['calls']} | {f['cumulative_s']} | {share} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--no-cprofile", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md only")
    parser.add_argument("--cprofile-child", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.cprofile_child is not None:
        cprofile_child(args.cprofile_child, rest)
        return
    HERE.mkdir(parents=True, exist_ok=True)
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for m in () if args.render_only else METHODS:
        if args.only and m.method not in args.only:
            continue
        if m.needs:
            ensure_setup(m.needs)
        entry: dict[str, Any] = {}
        for role, experiment in (("base", m.base), ("method", m.experiment)):
            overrides = m.overrides if role == "method" else m.base_overrides
            t = run_one(f"{m.method}-{role}", experiment, overrides, m.limit, False)
            t["experiment"] = experiment
            t["estimate"] = full_estimate(t)
            entry[role] = t
            print(
                f"{m.method} {role}: {t['process_wall_s']:.0f} s measured, "
                f"~{t['estimate']['full_total_s']:.0f} s full",
                flush=True,
            )
        if not args.no_cprofile:
            t = run_one(f"{m.method}-method", m.experiment, m.overrides, m.cprofile_limit, True)
            entry["profile"] = profile_tables(Path(t["run_dir"]) / "profile.pstats")
        if "profile" not in entry and "profile" in results.get(m.method, {}):
            entry["profile"] = results[m.method]["profile"]  # --no-cprofile keeps the last one
        results[m.method] = entry
        results_path.write_text(json.dumps(results, indent=2))
    text = markdown(results)
    out = HERE / "RESULTS.md"
    head = "# Where the time of the method runs goes (generated tables)\n\n"
    reading = ""
    if out.exists() and "## Reading" in out.read_text():
        reading = "\n\n## Reading" + out.read_text().split("## Reading", 1)[1]
    out.write_text(head + text + reading + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
