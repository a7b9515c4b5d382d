"""``clf-leaderboard``: reproduce published numbers from ``experiments/leaderboard/targets.yaml``.

    clf-leaderboard run --filter seq-mnist --seeds 3 [--jobs N]   # run, resume, aggregate
    clf-leaderboard run --filter seq-mnist --launcher slurm       # one Hydra multirun per config
    clf-leaderboard report                                        # re-aggregate, run nothing
    clf-leaderboard list [--filter ...]                           # the rows and their configs
    clf-leaderboard sweep-report <sweep dir>                      # table + best config of a sweep

Extra arguments after ``--`` are Hydra overrides added to every run (e.g. ``paths.data_dir=...``
or ``trainer.accelerator=gpu``). Exit codes: 0 all selected runs finished or were skipped for
missing data; 1 some run failed; 2 bad targets file or arguments.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from cl_framework.leaderboard import aggregate, launch
from cl_framework.leaderboard.targets import Target, TargetsError, load_targets, select

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_TARGETS = ROOT / "experiments" / "leaderboard" / "targets.yaml"
DEFAULT_RUNS = ROOT / "outputs" / "leaderboard" / "runs"
EXPERIMENT_DIR = ROOT / "conf" / "experiment"
SESSION_FILE = "last_session.json"
PLOT_FILE = "leaderboard.png"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", type=Path, default=DEFAULT_TARGETS, help="targets YAML file")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="PATTERN",
        help="select rows: a benchmark, strategy, paper or setting, or a glob on the row id or "
        "experiment (repeatable; any match selects)",
    )
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help="where runs are written")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where LEADERBOARD.md, leaderboard.png and results.csv go (default: beside targets)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clf-leaderboard", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the selected rows for N seeds, then aggregate")
    _common(run)
    run.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    run.add_argument("--jobs", type=int, default=1, help="parallel local runs (default 1)")
    run.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: subprocess pool; slurm: Hydra multiruns through hydra/launcher",
    )
    run.add_argument(
        "--hydra-launcher",
        default="slurm",
        help="hydra/launcher choice of --launcher slurm (default: conf/hydra/launcher/slurm.yaml)",
    )
    run.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    report = sub.add_parser("report", help="re-aggregate LEADERBOARD.md without running")
    _common(report)
    report.add_argument("--seeds", type=int, default=None, help="only seeds 0..N-1")
    lst = sub.add_parser("list", help="print the selected rows")
    _common(lst)
    sweep = sub.add_parser("sweep-report", help="collect a clf-sweep directory")
    sweep.add_argument("sweep_dir", type=Path)
    sweep.add_argument(
        "--best-dir",
        type=Path,
        default=None,
        help="where the best config goes (default conf/experiment/best)",
    )
    sweep.add_argument("--no-best", action="store_true", help="do not write the best config")
    return parser


def _targets(args: argparse.Namespace) -> tuple[list[Target], list[Target]]:
    """All rows and the selected ones."""
    targets = load_targets(args.targets, EXPERIMENT_DIR if EXPERIMENT_DIR.is_dir() else None)
    selected = select(targets, args.filter)
    if not selected:
        raise TargetsError(f"no row of {args.targets} matches --filter {args.filter}")
    return targets, selected


def write_report(
    targets: list[Target],
    runs_dir: Path,
    out_dir: Path,
    seeds: list[int] | None = None,
    echo=print,
) -> list[aggregate.RowResult]:
    """LEADERBOARD.md, leaderboard.png and results.csv for ``targets``."""
    results = aggregate.collect(targets, runs_dir, seeds)
    session_path = Path(runs_dir) / SESSION_FILE
    session = json.loads(session_path.read_text()) if session_path.is_file() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    aggregate.plot(results, out_dir / PLOT_FILE)
    aggregate.write_csv(results, out_dir / "results.csv")
    text = aggregate.markdown(results, session, PLOT_FILE)
    (out_dir / "LEADERBOARD.md").write_text(text)
    echo(text.split("\n## Per-seed")[0])
    echo(f"wrote {out_dir / 'LEADERBOARD.md'}, {out_dir / PLOT_FILE}, {out_dir / 'results.csv'}")
    return results


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    targets, selected = _targets(args)
    if args.seeds <= 0 or args.jobs <= 0:
        raise TargetsError("--seeds and --jobs must be positive")
    seeds = list(range(args.seeds))
    specs = launch.plan_runs((t.experiment for t in selected), seeds, args.runs_dir)
    print(
        f"{len(selected)} row(s), {len({t.experiment for t in selected})} experiment config(s), "
        f"seeds {seeds}: {len(specs)} run(s) under {args.runs_dir}"
    )
    for t in selected:
        if not t.data_offline:
            print(f"note: row '{t.id}' needs data that is not available offline; it is skipped "
                  "if its data is missing")  # fmt: skip
    start = time.perf_counter()
    if args.launcher == "local":
        outcomes = launch.run_local(specs, args.jobs, args.overrides)
    else:
        outcomes = launch.run_slurm(specs, args.runs_dir, args.hydra_launcher, args.overrides)
    elapsed = time.perf_counter() - start
    executed = [o for o in outcomes if o.status != launch.SKIPPED]
    session = {
        "command": "clf-leaderboard " + " ".join(shlex.quote(a) for a in argv),
        "jobs": args.jobs if args.launcher == "local" else f"{args.launcher} launcher",
        "runs_executed": len(executed),
        "elapsed_s": round(elapsed, 1),
        "machine": aggregate.machine(),
        "finished_at": datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    if any(o.status == launch.DONE for o in executed):  # keep the session that made numbers
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        (args.runs_dir / SESSION_FILE).write_text(json.dumps(session, indent=2))
    out_dir = args.out_dir or args.targets.parent
    write_report(targets, args.runs_dir, out_dir)
    failed = [
        o for o in outcomes if o.status in (launch.FAILED, launch.BAD_INPUT, launch.NON_FINITE)
    ]
    missing = sorted({o.experiment for o in outcomes if o.status == launch.DATA_MISSING})
    if missing:
        print(f"skipped for missing data: {', '.join(missing)}")
    if failed:
        print(f"{len(failed)} run(s) failed: " + "; ".join(
            f"{o.experiment} seed {o.seed} ({o.status})" for o in failed))  # fmt: skip
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    targets, selected = _targets(args)
    seeds = None if args.seeds is None else list(range(args.seeds))
    out_dir = args.out_dir or args.targets.parent
    write_report(selected if args.filter else targets, args.runs_dir, out_dir, seeds)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, selected = _targets(args)
    for t in selected:
        print(
            f"{t.id:28s} {t.experiment:30s} {t.setting:9s} {t.metric:14s} "
            f"{t.published:6.2f} {t.tolerance_text():>10s} "
            f"{'offline' if t.data_offline else 'needs data'}"
        )
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from cl_framework.leaderboard.sweep import report_sweep

    report_sweep(args.sweep_dir, best_dir=args.best_dir, write_best=not args.no_best)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "list":
            return cmd_list(args)
        return cmd_sweep_report(args)
    except (TargetsError, FileNotFoundError, ValueError) as exc:
        print(f"clf-leaderboard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clf-leaderboard: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
