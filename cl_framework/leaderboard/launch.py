"""Running the leaderboard's (experiment, seed) pairs: planning, resume and launchers.

Every run is one ``clf-train experiment=<cfg> seed=<s> hydra.run.dir=<runs>/<cfg>/seed<s>``.
Rows that share an experiment config share its runs. A run whose ``metrics.json`` exists is
finished and never repeated; one with a checkpoint but no ``metrics.json`` continues with
``clf-train resume=<run dir>``. Each run's outcome goes to ``<run dir>/leaderboard_status.json``.

Launchers:

* ``local``: a pool of ``jobs`` subprocesses on this machine. A run that stops with exit code 2
  and a ``data file`` message marks its experiment's data as missing: its other seeds are
  skipped with that note.
* ``slurm``: one Hydra multirun per experiment (``clf-train -m ... seed=a,b hydra/launcher=slurm``)
  through Hydra's submitit launcher plug-in; the multiruns are started together and waited for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from cl_framework.cli_errors import EXIT_BAD_INPUT

STATUS_FILE = "leaderboard_status.json"
LOG_FILE = "clf-train.log"
EXIT_NON_FINITE = 3

#: statuses a run can end in
DONE, DATA_MISSING, BAD_INPUT, NON_FINITE, FAILED, SKIPPED = (
    "done",
    "data_missing",
    "bad_input",
    "non_finite",
    "failed",
    "skipped",
)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the leaderboard."""

    experiment: str
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.experiment} seed {self.seed}"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"


@dataclass
class RunOutcome:
    experiment: str
    seed: int
    status: str
    returncode: int | None = None
    message: str = ""
    seconds: float = 0.0
    resumed: bool = False


def run_dir_for(runs_dir: Path, experiment: str, seed: int) -> Path:
    return Path(runs_dir) / experiment / f"seed{seed}"


def plan_runs(experiments: Iterable[str], seeds: Sequence[int], runs_dir: Path) -> list[RunSpec]:
    """Every (experiment, seed) pair, first seeds of all experiments first (so missing data and
    broken configs show early, and an interrupted leaderboard covers every row)."""
    unique = list(dict.fromkeys(experiments))
    return [
        RunSpec(exp, seed, run_dir_for(runs_dir, exp, seed)) for seed in seeds for exp in unique
    ]


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_status(run_dir: Path, outcome: RunOutcome) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(outcome), indent=2))
    os.replace(tmp, run_dir / STATUS_FILE)


def clf_train_command() -> list[str]:
    """``clf-train`` of this interpreter's environment (``python -m`` if the script is absent)."""
    script = Path(sys.executable).parent / "clf-train"
    if script.is_file():
        return [str(script)]
    found = shutil.which("clf-train")
    return [found] if found else [sys.executable, "-m", "cl_framework.train"]


def train_args(spec: RunSpec, overrides: Sequence[str] = ()) -> list[str]:
    """The ``clf-train`` arguments of one run (a resume if a checkpoint is left over)."""
    common = [f"hydra.run.dir={spec.run_dir}", "trainer.progress_bar=false"]
    if spec.checkpoint.is_file():
        return [f"resume={spec.run_dir}", *common]
    return [f"experiment={spec.experiment}", f"seed={spec.seed}", *common, *overrides]


def classify(returncode: int, stderr_tail: str) -> tuple[str, str]:
    """Status and one-line note of a finished ``clf-train`` process."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    message = next((ln for ln in reversed(lines) if ln.startswith("clf-train:")), "")
    message = message.removeprefix("clf-train:").strip() or (lines[-1] if lines else "")
    if returncode == 0:
        return DONE, ""
    if returncode == EXIT_BAD_INPUT and message.startswith("data file '"):
        return DATA_MISSING, message
    if returncode == EXIT_BAD_INPUT:
        return BAD_INPUT, message
    if returncode == EXIT_NON_FINITE:
        return NON_FINITE, message
    return FAILED, message or f"exit code {returncode}"


Executor = Callable[[RunSpec, Sequence[str], dict[str, str]], tuple[int, str]]


def subprocess_executor(command: Sequence[str] | None = None) -> Executor:
    """Runs ``clf-train`` (or ``command``) for one spec; output goes to ``<run dir>/clf-train.log``.

    Returns the exit code and the tail of the output (for the failure note).
    """
    base = list(command) if command is not None else clf_train_command()

    def execute(spec: RunSpec, overrides: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = spec.run_dir / LOG_FILE
        with log_path.open("w") as log:
            proc = subprocess.run(
                [*base, *train_args(spec, overrides)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
            )
        text = log_path.read_text(errors="replace")
        return proc.returncode, text[-4000:]

    return execute


def job_env(jobs: int) -> dict[str, str]:
    """The environment of each run: ``OMP_NUM_THREADS`` shares the cores among the jobs."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    return env


def run_local(
    specs: Sequence[RunSpec],
    jobs: int = 1,
    overrides: Sequence[str] = (),
    executor: Executor | None = None,
    echo: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Run the unfinished ``specs`` with ``jobs`` parallel processes; finished ones are skipped."""
    execute = executor or subprocess_executor()
    env = job_env(jobs)
    todo = [s for s in specs if not s.finished]
    echo(
        f"{len(specs) - len(todo)} of {len(specs)} runs already finished; "
        f"running {len(todo)} with {jobs} job(s)"
    )
    missing: dict[str, str] = {}
    lock = threading.Lock()
    counter = [0]

    def one(spec: RunSpec) -> RunOutcome:
        with lock:
            note = missing.get(spec.experiment)
        if note is not None:
            outcome = RunOutcome(spec.experiment, spec.seed, SKIPPED, message=note)
            write_status(spec.run_dir, outcome)
            echo(f"[skip] {spec.name}: {note.split('. Fix:')[0][:200]}")
            return outcome
        resumed = spec.checkpoint.is_file()
        start = time.perf_counter()
        returncode, tail = execute(spec, overrides, env)
        status, message = classify(returncode, tail)
        if status == DONE and not spec.finished:
            status, message = FAILED, "exit code 0 but no metrics.json"
        outcome = RunOutcome(
            spec.experiment,
            spec.seed,
            status,
            returncode=returncode,
            message=message,
            seconds=round(time.perf_counter() - start, 2),
            resumed=resumed,
        )
        write_status(spec.run_dir, outcome)
        with lock:
            if status == DATA_MISSING:
                missing[spec.experiment] = f"data missing (seed {spec.seed}): {message}"
            counter[0] += 1
            done = counter[0]
        extra = ""
        if status == DONE:
            metrics = json.loads(spec.metrics_path.read_text())
            extra = f" class-IL {metrics['final_avg_acc']['class_il']:.2f}"
        elif message:
            extra = f": {message[:300]}"
        echo(
            f"[{done}/{len(todo)}] {spec.name}: {status}{' (resumed)' if resumed else ''} "
            f"in {outcome.seconds:.0f} s{extra}"
        )
        return outcome

    if jobs <= 1:
        return [one(s) for s in todo]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, todo))


def slurm_commands(
    specs: Sequence[RunSpec],
    runs_dir: Path,
    hydra_launcher: str = "slurm",
    overrides: Sequence[str] = (),
    command: Sequence[str] | None = None,
) -> list[list[str]]:
    """One ``clf-train -m`` multirun per experiment over its unfinished seeds.

    The sweep directory is the experiment's runs folder and each job's sub-directory is
    ``seed<s>``, so the runs land where the local launcher puts them (resume and ``report``
    work the same). ``hydra_launcher`` is a ``hydra/launcher`` choice (``slurm`` =
    ``conf/hydra/launcher/slurm.yaml``; ``basic`` runs the same multirun locally).
    """
    base = list(command) if command is not None else clf_train_command()
    by_experiment: dict[str, list[int]] = {}
    for spec in specs:
        if not spec.finished:
            by_experiment.setdefault(spec.experiment, []).append(spec.seed)
    return [
        [
            *base,
            "-m",
            f"experiment={experiment}",
            "seed=" + ",".join(str(s) for s in seeds),
            f"hydra/launcher={hydra_launcher}",
            f"hydra.sweep.dir={Path(runs_dir) / experiment}",
            "hydra.sweep.subdir=seed${seed}",
            "trainer.progress_bar=false",
            *overrides,
        ]
        for experiment, seeds in by_experiment.items()
    ]


def run_slurm(
    specs: Sequence[RunSpec],
    runs_dir: Path,
    hydra_launcher: str = "slurm",
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Start the per-experiment multiruns together (each waits for its jobs), then record
    the outcome of every run from the files it left."""
    commands = slurm_commands(specs, runs_dir, hydra_launcher, overrides)
    echo(f"submitting {len(commands)} multirun(s) through hydra/launcher={hydra_launcher}")
    procs = []
    for cmd in commands:
        echo("  " + " ".join(cmd))
        experiment = cmd[cmd.index("-m") + 1].split("=", 1)[1]
        log_dir = Path(runs_dir) / experiment
        log_dir.mkdir(parents=True, exist_ok=True)
        log = (log_dir / "multirun.log").open("w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        proc.wait()
        log.close()
    outcomes = []
    for spec in specs:
        if spec.finished:
            outcomes.append(RunOutcome(spec.experiment, spec.seed, DONE))
        else:
            outcomes.append(
                RunOutcome(
                    spec.experiment,
                    spec.seed,
                    FAILED,
                    message=f"no metrics.json; see {Path(runs_dir) / spec.experiment}/multirun.log",
                )
            )
        write_status(spec.run_dir, outcomes[-1])
    return outcomes
