"""``clf-sweep``: hyper-parameter sweeps whose objective is validation accuracy, never test.

``clf-sweep`` is ``clf-train`` with a different return value: the same Hydra config tree
(primary config ``conf/sweep.yaml`` = ``train.yaml`` + an ``hparams_search`` group), the same run
outputs, plus the ``val_eval`` plug-in (added when missing), and the value handed to Hydra's
sweeper is the final average accuracy on the validation splits (``scenario.val_fraction`` of each
experience's training data) read from ``val_metrics.json``. A config without validation data
stops with exit code 2. A diverged trial (non-finite loss) scores 0.

    clf-sweep -m experiment=seq-mnist/derpp-500 hparams_search=seq-mnist-derpp

The ``hparams_search`` configs select the Optuna sweeper (``hydra-optuna-sweeper``) and add the
:class:`SweepReport` callback, which at the end of the sweep writes the trial table
(``sweep_results.md`` / ``.csv`` in the sweep directory) and the best trial as an experiment
config keyed by (benchmark, strategy, buffer): ``conf/experiment/best/<benchmark>/<strategy>-
<buffer>.yaml``, usable as ``clf-train experiment=best/<benchmark>/<strategy>-<buffer>``.
``clf-leaderboard sweep-report <sweep dir>`` does the same for an existing sweep directory.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cl_framework.strategies.val_eval import VAL_METRICS_FILE

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_DIR = str(ROOT / "conf")
BEST_DIR = ROOT / "conf" / "experiment" / "best"
VAL_PLUGIN = "val_eval"
#: the sweep's own keys, not part of a run config
SWEEP_KEYS = ("objective",)
#: command-line overrides of a sweep that do not belong in a best config
NOT_IN_BEST = (
    "experiment",
    "hparams_search",
    "seed",
    "hydra.",
    "paths.",
    "trainer.progress_bar",
    "trainer.checkpoint",
)
log = logging.getLogger("cl_framework.sweep")


# --------------------------------------------------------------------------- the task function
def sweep_config(cfg: DictConfig | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The run config (validation plug-in appended, sweep keys removed) and the objective."""
    from cl_framework.errors import ConfigError
    from cl_framework.run_config import to_plain

    plain = dict(to_plain(cfg))
    objective = str(plain.pop("objective", "class_il"))
    if objective not in ("class_il", "task_il"):
        raise ConfigError("objective", f"unknown objective '{objective}'", "class_il or task_il")
    val_fraction = float((plain.get("scenario") or {}).get("val_fraction") or 0.0)
    if val_fraction <= 0.0:
        raise ConfigError(
            "scenario.val_fraction",
            "clf-sweep selects hyper-parameters on validation data, but it is 0",
            "set scenario.val_fraction (e.g. 0.1; the hparams_search configs do)",
        )
    strategies = dict(plain.get("strategy") or {})
    strategies.setdefault(VAL_PLUGIN, {})
    strategies[VAL_PLUGIN] = strategies.pop(VAL_PLUGIN)  # evaluated after every other plug-in
    plain["strategy"] = strategies
    return plain, objective


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sweep")
def hydra_main(cfg: DictConfig) -> float:
    from cl_framework.errors import CLFrameworkError, NonFiniteLossError
    from cl_framework.train import quiet_lightning, run

    quiet_lightning()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        plain, objective = sweep_config(cfg)
        run(plain, output_dir, explicit_overrides=True)
    except NonFiniteLossError as exc:
        log.warning("trial diverged (%s): objective 0", exc)
        _write_json(output_dir / "trial_status.json", {"status": "non_finite", "message": str(exc)})
        return 0.0
    except CLFrameworkError as exc:
        print(f"clf-sweep: {exc}", file=sys.stderr)
        sys.exit(2)
    value = json.loads((output_dir / VAL_METRICS_FILE).read_text())["final_avg_acc"][objective]
    log.info("objective (validation final avg acc, %s): %.3f", objective, value)
    return float(value)


# --------------------------------------------------------------------------- collecting a sweep
@dataclass
class Trial:
    number: int
    run_dir: Path
    params: dict[str, Any]
    objective: float | None  # validation final average accuracy
    test_class_il: float | None
    status: str
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    experiment: str | None = None


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _sweep_meta(sweep_dir: Path) -> dict[str, Any]:
    """Searched keys, objective and fixed command-line overrides of a sweep.

    Read from ``multirun.yaml`` (basic sweeper) or else from the first trial's ``.hydra``
    files (the Optuna sweeper writes no multirun.yaml).
    """
    meta: dict[str, Any] = {
        "params": [], "task_overrides": [], "objective": "class_il", "sweeper": {},
        "hparams_search": None,
    }  # fmt: skip
    multirun = sweep_dir / "multirun.yaml"
    trial_dirs = sorted(sweep_dir.glob("*/.hydra/hydra.yaml"))
    if multirun.is_file():
        conf = OmegaConf.load(multirun)
        hydra_node, objective = conf.get("hydra", {}), conf.get("objective", "class_il")
    elif trial_dirs:
        hydra_node = OmegaConf.load(trial_dirs[0]).get("hydra", {})
        job_cfg = trial_dirs[0].with_name("config.yaml")
        objective = (
            OmegaConf.load(job_cfg).get("objective", "class_il")
            if job_cfg.is_file()
            else "class_il"
        )
    else:
        return meta
    sweeper = OmegaConf.to_container(hydra_node.get("sweeper", {}), resolve=False) or {}
    params = list((sweeper.get("params") or {}).keys())
    task = list(OmegaConf.to_container(hydra_node.get("overrides", {}).get("task", [])) or [])
    choices = OmegaConf.to_container(hydra_node.get("runtime", {}).get("choices", {})) or {}
    meta.update(
        params=params,
        # the sweep's own command line: a trial's overrides minus the sampled parameters
        task_overrides=[o for o in task if str(o).lstrip("+~").partition("=")[0] not in params],
        objective=str(objective),
        sweeper=sweeper,
        hparams_search=choices.get("hparams_search"),
    )
    return meta


#: status of a run that finished but has no val_metrics.json (a plain ``clf-train -m`` sweep)
FINISHED_NO_VALIDATION = "done (no val_eval)"


def collect_trials(sweep_dir: Path) -> tuple[list[Trial], dict[str, Any]]:
    """Every trial folder of a sweep (those holding ``.hydra/overrides.yaml``)."""
    sweep_dir = Path(sweep_dir)
    meta = _sweep_meta(sweep_dir)
    searched = set(meta["params"])
    trials = []
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra")):
        run_dir = hydra_dir.parent
        overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
        params = {}
        for o in overrides:
            key, _, value = str(o).lstrip("+~").partition("=")
            if key in searched or (not searched and key not in meta["task_overrides"]):
                params[key] = _parse_value(value)
        hydra_cfg = (
            yaml.safe_load((hydra_dir / "hydra.yaml").read_text())
            if (hydra_dir / "hydra.yaml").is_file()
            else {}
        )
        job = (hydra_cfg or {}).get("hydra", {}).get("job", {})
        choices = (hydra_cfg or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
        number = int(job.get("num", len(trials)))
        metrics_path, val_path = run_dir / "metrics.json", run_dir / VAL_METRICS_FILE
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        val = json.loads(val_path.read_text()) if val_path.is_file() else None
        status_path = run_dir / "trial_status.json"
        if metrics is not None and val is not None:
            status = "ok"
            objective = val["final_avg_acc"][meta["objective"]]
        elif status_path.is_file():
            status = json.loads(status_path.read_text()).get("status", "failed")
            objective = 0.0 if status == "non_finite" else None
        elif metrics is not None:  # a finished plain `clf-train -m` run: no validation objective
            status, objective = FINISHED_NO_VALIDATION, None
        else:
            status, objective = "failed", None
        trials.append(
            Trial(
                number=number,
                run_dir=run_dir,
                params=params,
                objective=None if objective is None else float(objective),
                test_class_il=None if metrics is None else metrics["final_avg_acc"]["class_il"],
                status=status,
                wall_time_s=None if metrics is None else metrics.get("wall_time_s"),
                config=(metrics or {}).get("config", {}),
                experiment=choices.get("experiment"),
            )
        )
    trials.sort(key=lambda t: t.number)
    return trials, meta


def best_trial(trials: list[Trial]) -> Trial | None:
    ok = [t for t in trials if t.status == "ok" and t.objective is not None]
    return max(ok, key=lambda t: (t.objective, -t.number)) if ok else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_markdown(trials: list[Trial], meta: dict[str, Any], sweep_dir: Path) -> str:
    best = best_trial(trials)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    first = next((t for t in trials if t.config), None)
    scenario = (first.config.get("scenario", {}) if first else {}) or {}
    sweeper = meta.get("sweeper") or {}
    sampler = (sweeper.get("sampler") or {}).get("_target_", "?").rsplit(".", 1)[-1]
    if (sweeper.get("sampler") or {}).get("seed") is not None:
        sampler += f" (seed {sweeper['sampler']['seed']})"
    lines = [
        f"# Sweep `{sweep_dir.name}`"
        + (f" (hparams_search={meta['hparams_search']})" if meta.get("hparams_search") else ""),
        "",
        f"Objective: final average **validation** accuracy ({meta['objective']}) on "
        f"scenario.val_fraction = {scenario.get('val_fraction')} of each experience's training "
        f"data; training subset scenario.max_train_per_class = "
        f"{scenario.get('max_train_per_class')}. Test accuracy is shown for information only and "
        f"was not used for selection. Sampler: {sampler}, {len(trials)} trial(s). Command-line "
        f"overrides: `{' '.join(meta.get('task_overrides') or [])}`.",
        "",
        "| trial | " + " | ".join(keys) + " | val acc (objective) | test class-IL | wall s | "
        "status |",
        "|---|" + "---|" * len(keys) + "---|---|---|---|",
    ]
    for t in trials:
        mark = " **best**" if best is not None and t is best else ""
        lines.append(
            f"| {t.number}{mark} | "
            + " | ".join(_fmt(t.params.get(k, "-")) for k in keys)
            + f" | {_fmt(t.objective) if t.objective is not None else '-'} | "
            f"{_fmt(t.test_class_il) if t.test_class_il is not None else '-'} | "
            f"{_fmt(t.wall_time_s) if t.wall_time_s is not None else '-'} | {t.status} |"
        )
    return "\n".join(lines) + "\n"


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def best_config_key(trial: Trial) -> tuple[str, str, str]:
    """(benchmark, strategy, buffer) of a trial, from its resolved config."""
    cfg = trial.config
    benchmark = str(cfg.get("scenario", {}).get("name", "unknown"))
    strategies = [s for s in cfg.get("strategy", {}) if s != VAL_PLUGIN]
    buffer = int(cfg.get("buffer", {}).get("size", 0) or 0)
    return benchmark, "+".join(strategies) or "none", str(buffer)


def best_config_text(trial: Trial, meta: dict[str, Any], sweep_dir: Path) -> str:
    """An experiment config: the sweep's base experiment + its fixed overrides + best params."""
    fixed = {}
    for o in meta.get("task_overrides") or []:
        key, _, value = str(o).lstrip("+~").partition("=")
        if not key.startswith(NOT_IN_BEST) and key not in trial.params:
            fixed[key] = _parse_value(value)
    values = _nest({**fixed, **trial.params})
    scenario = trial.config.get("scenario", {})
    header = [
        "# @package _global_",
        f"# Best trial ({trial.number}) of the sweep {sweep_dir.name}"
        + (f" (hparams_search={meta['hparams_search']})" if meta.get("hparams_search") else "")
        + ", written by clf-sweep.",
        f"# Selected on validation data only: final average {meta['objective']} accuracy "
        f"{trial.objective:.2f} on scenario.val_fraction={scenario.get('val_fraction')}",
        "# of each experience's training data, trained on "
        + (
            f"max_train_per_class={scenario['max_train_per_class']} images per class."
            if scenario.get("max_train_per_class")
            else "the rest of the training data."
        ),
        "# This config trains on the full training data (no validation split, no subset).",
    ]
    body: dict[str, Any] = {}
    if trial.experiment:
        # group-style default: the base config's relative defaults resolve as under experiment=
        body["defaults"] = [{"/experiment@_here_": trial.experiment}, "_self_"]
    body.update(values)
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False)


def report_sweep(
    sweep_dir: Path, best_dir: Path | None = None, write_best: bool = True, echo=print
) -> Path | None:
    """Write ``sweep_results.md`` / ``.csv`` into the sweep dir and the best config file.

    Returns the best config's path (None when no trial finished or writing is off).
    """
    sweep_dir = Path(sweep_dir)
    trials, meta = collect_trials(sweep_dir)
    if not trials:
        raise FileNotFoundError(f"no trial folders (with .hydra/) under {sweep_dir}")
    text = trials_markdown(trials, meta, sweep_dir)
    (sweep_dir / "sweep_results.md").write_text(text)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    with (sweep_dir / "sweep_results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", *keys, "val_objective", "test_class_il", "wall_time_s", "status"])
        for t in trials:
            w.writerow([t.number, *(t.params.get(k, "") for k in keys), t.objective,
                        t.test_class_il, t.wall_time_s, t.status])  # fmt: skip
    echo(text)
    best = best_trial(trials)
    if best is None or not write_best:
        return None
    if not best.experiment:
        echo("best config not written: the sweep had no experiment= to build it on")
        return None
    benchmark, strategy, buffer = best_config_key(best)
    path = Path(best_dir or BEST_DIR) / benchmark / f"{strategy}-{buffer}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(best_config_text(best, meta, sweep_dir))
    name = path.relative_to(path.parents[2]).with_suffix("")
    echo(f"best trial {best.number} (validation {best.objective:.2f}) -> {path}")
    echo(f"run it: clf-train experiment={name}")
    return path


class SweepReport(Callback):
    """Hydra callback: collect the sweep (table + best config) when the multirun ends."""

    def __init__(self, best_dir: str | None = None, write_best: bool = True) -> None:
        self.best_dir = Path(best_dir) if best_dir else None
        self.write_best = write_best

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report_sweep(sweep_dir, self.best_dir, self.write_best, echo=log.info)
        except (OSError, ValueError, KeyError) as exc:  # never fail a finished sweep
            log.error("sweep report failed: %s", exc)


def main() -> None:
    """``clf-sweep``; Hydra's composition errors (typos, unknown choices) exit 2, our message."""
    from cl_framework.cli_errors import run_hydra_cli

    run_hydra_cli(hydra_main, "clf-sweep", CONFIG_DIR)


if __name__ == "__main__":
    main()
