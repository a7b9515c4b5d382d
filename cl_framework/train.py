"""``clf-train``: the Hydra entry point. ``python -m cl_framework.train`` is the same.

Example: ``clf-train experiment=seq-mnist/derpp-500 seed=1``. Writes ``metrics.json``,
``acc_matrix.csv`` and plots into the Hydra run directory.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cl_framework.cli_errors import EXIT_BAD_INPUT
from cl_framework.errors import CLFrameworkError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("cl_framework")


def quiet_lightning() -> None:
    """Lightning prints device banners at every Trainer; we build one per experience."""
    import pytorch_lightning  # noqa: F401  (sets its logger levels on import; override after)

    prefixes = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    names = [*prefixes, *logging.root.manager.loggerDict]
    for name in names:
        if name.startswith(prefixes):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returns `None`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def prepare_resume(
    cfg: DictConfig | dict, explicit: bool, passed: tuple[str, ...] = ()
) -> tuple[dict, dict, Path, Path]:
    """Config, checkpoint payload, run dir and checkpoint path of ``resume=<run dir>``.

    The run continues with the config stored in its checkpoint. ``explicit`` means the command
    line selected more than ``resume=``: then it must describe the same run (only paths and
    display keys may differ), otherwise one error names the first differing key. ``passed``
    are the dotted keys given on the command line: of the keys that may differ, those replace
    the saved values (e.g. ``paths.data_dir`` on another machine).
    """
    from cl_framework.engine.checkpoint import checkpoint_path, load_checkpoint
    from cl_framework.errors import ConfigError
    from cl_framework.run_config import RESUME_MAY_DIFFER, config_differences, to_plain

    plain = to_plain(cfg)
    target = Path(str(plain["resume"])).expanduser()
    ckpt = checkpoint_path(target) if target.is_dir() else target
    payload = load_checkpoint(ckpt)
    saved = dict(payload["config"])
    if explicit:
        diffs = config_differences(saved, plain)
        if diffs:
            raise ConfigError(
                "resume",
                f"the command line differs from the checkpointed run at '{diffs[0]}'"
                + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""),
                "repeat the original command with resume=..., or pass resume=... alone",
            )
    for key in passed:
        if any(key == p or key.startswith(p + ".") for p in RESUME_MAY_DIFFER[1:]):
            _set_dotted(saved, key, _get_dotted(plain, key))
    saved["resume"] = str(ckpt)
    run_dir = ckpt.parent.parent
    return saved, payload, run_dir, ckpt


def _get_dotted(node: dict, key: str):
    for part in key.split("."):
        node = node[part]
    return node


def _set_dotted(node: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def run(
    cfg: DictConfig | dict,
    output_dir: Path,
    explicit_overrides: bool = True,
    passed_keys: tuple[str, ...] = (),
    startup_s: Mapping[str, float] | None = None,
) -> dict:
    """Build, train, evaluate and write the outputs of one run; returns metrics.json.

    With ``resume=<run dir>`` the run continues from that directory's last checkpoint and
    writes its outputs there. ``startup_s``: seconds spent before this call (``clf-train``:
    interpreter start, imports, Hydra), recorded as phases of ``timings.json``.
    """
    started = time.perf_counter()  # the engine's imports (matplotlib, ...) count as building
    from cl_framework.build import build_runner
    from cl_framework.errors import CLFrameworkError
    from cl_framework.evaluation.report import (
        append_results_log,
        build_metrics,
        format_summary,
        write_outputs,
        write_timings,
    )
    from cl_framework.evaluation.tracking import finish_loggers, log_final_metrics, log_run_config
    from cl_framework.run_config import to_plain

    plain = to_plain(cfg)
    if plain.get("resume"):
        cfg, payload, output_dir, ckpt = prepare_resume(cfg, explicit_overrides, passed_keys)
        runner = build_runner(cfg, output_dir)
        runner.load_checkpoint_payload(payload, str(ckpt))
    else:
        runner = build_runner(cfg, output_dir)
    runner.clock.add("build (data, model, buffer)", time.perf_counter() - started)
    for name, seconds in (startup_s or {}).items():
        runner.clock.add(name, seconds)
    log_run_config(runner.loggers, runner.config)
    try:
        result = runner.run()
    except CLFrameworkError:
        raise
    except BaseException as exc:  # a crash: keep what was measured, then fail loudly
        runner.write_partial_results(reason=f"{type(exc).__name__}: {exc}")
        raise
    plain = {k: v for k, v in to_plain(cfg).items() if k != "resume"}
    metrics = build_metrics(
        result,
        scenario=runner.scenario.name,
        setting=runner.scenario.setting,
        strategies=list(plain["strategy"]),
        seed=int(plain.get("seed", 0)),
        config=plain,
    )
    log_final_metrics(runner.loggers, metrics, step=runner.module.step_count)
    finish_loggers(runner.loggers)
    if runner.rank == 0:  # DDP: one writer
        with runner.clock.phase("outputs (files, plots)"):
            paths = write_outputs(output_dir, metrics)
        wall = time.perf_counter() - started + sum((startup_s or {}).values())
        timings = write_timings(output_dir, runner.clock, wall, runner.train_batches)
        log.info("\n%s", format_summary(metrics))
        log.info("time by phase: %s (all: %s)", runner.clock.summary_line(), timings.name)
        log.info("outputs in %s", paths["metrics"].parent)
        results_log = plain.get("paths", {}).get("results_log")
        if results_log:
            log.info("results log: %s", append_results_log(results_log, output_dir, metrics))
    return metrics


#: Exit codes: 2 bad input (config, data, checkpoint), 3 non-finite loss, 130/143 interrupted.
EXIT_NON_FINITE = 3


def quiet_other_ranks(cfg: DictConfig) -> None:
    """Under DDP every rank runs this process; only rank 0 prints progress lines (warnings and
    errors still come from every rank)."""
    from cl_framework.engine.distributed import global_rank

    if global_rank(int(cfg.trainer.get("devices", 1))) > 0:
        logging.getLogger("cl_framework").setLevel(logging.WARNING)


def log_choices(cfg: DictConfig, choices: dict) -> None:
    """Say which group files the run took: a scenario brings its usual backbone and trainer."""
    strategies = ",".join(str(k) for k in (cfg.get("strategy") or {}))
    log.info(
        "config: scenario %s | backbone %s | trainer %s (%s epoch(s) per experience, batch %s)"
        " | strategy [%s]%s",
        choices.get("scenario"),
        choices.get("backbone"),
        choices.get("trainer"),
        cfg.trainer.epochs,
        cfg.trainer.batch_size,
        strategies,
        f" | experiment {choices['experiment']}" if choices.get("experiment") else "",
    )


def _command_line() -> tuple[bool, tuple[str, ...]]:
    """Whether the command line selected anything besides resume= / paths / display options,
    and the dotted keys it set."""
    ignored = ("resume=", "hydra.", "trainer.progress_bar=", "paths.")
    task = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    keys = tuple(o.split("=", 1)[0] for o in task if "=" in o)
    return any(not o.startswith(ignored) for o in task), keys


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """The Hydra task: one run (one job of a ``-m`` sweep)."""
    from cl_framework.cli_errors import check_added_strategies
    from cl_framework.engine.timing import IMPORT_PHASE, STARTUP_PHASE, process_age_s
    from cl_framework.errors import NonFiniteLossError, RunInterrupted

    # the whole process in timings.json: what ran before this task (not again for the later
    # jobs of a sweep, which share the process), then Lightning's import (torch, torchmetrics
    # and what they pull in: most of a short run's start-up)
    before = process_age_s()
    import_started = time.perf_counter()
    quiet_lightning()
    startup_s = {IMPORT_PHASE: time.perf_counter() - import_started}
    hydra_cfg = HydraConfig.get()
    if before is not None and (hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.job.num == 0):
        startup_s = {STARTUP_PHASE: before, **startup_s}
    quiet_other_ranks(cfg)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        check_added_strategies(
            list(hydra_cfg.overrides.task), str(hydra_cfg.job.config_name), Path(CONFIG_DIR)
        )
        log_choices(cfg, dict(hydra_cfg.runtime.choices))
        explicit, keys = _command_line()
        metrics = run(
            cfg, output_dir, explicit_overrides=explicit, passed_keys=keys, startup_s=startup_s
        )
    except RunInterrupted as exc:
        print(f"clf-train: {exc}; resume with resume=<run dir>", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except NonFiniteLossError as exc:
        print(f"clf-train: {exc}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)
    except CLFrameworkError as exc:
        print(f"clf-train: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    return float(metrics["final_avg_acc"]["class_il"])


def main() -> None:
    """``clf-train``; Hydra's composition errors (typos, unknown choices) exit 2, our message."""
    from cl_framework.cli_errors import run_hydra_cli

    run_hydra_cli(hydra_main, "clf-train", CONFIG_DIR)


if __name__ == "__main__":
    main()
