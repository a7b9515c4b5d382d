"""Hydra's own composition errors, re-raised as our one-line :class:`ConfigError` (exit 2).

A typo such as ``strategy.derpp.alpah=1`` fails inside Hydra, before our validation runs, with
"Key 'alpah' is not in struct" and exit 1, and a suggestion to add ``+`` (which, for a strategy
that is not selected, would silently enable it). :func:`run_hydra_cli` runs a Hydra entry point so
that those errors reach us, and :func:`explain_composition_error` turns each into the message our
validation gives for the same mistake: the key, the problem, and the valid keys or choices.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cl_framework.errors import ConfigError

#: Exit status of bad input (config, data, checkpoint), shared by every command.
EXIT_BAD_INPUT = 2

_MISSING = re.compile(r"Could not (?:find|load) '([^']+)'")


def run_hydra_cli(
    entry: Callable[[], Any], program: str, config_dir: str | Path, run_schemas: bool = True
) -> None:
    """Call the ``@hydra.main`` function ``entry``; a composition error exits 2 with our message.

    Hydra reports composition errors itself (and exits 1) unless ``HYDRA_FULL_ERROR=1``; we set it
    for the call so the exception reaches us. A user who set it keeps Hydra's full traceback.
    ``run_schemas``: the config is a training run's (``train.yaml``), so unknown keys can list
    the valid keys of their section.

    The process is expected to end after this call (it is a console script's body): the
    garbage collector is frozen on the way out, see :func:`skip_collector_at_exit`.
    """
    from hydra.errors import ConfigCompositionException, OverrideParseException

    user_choice = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        entry()
    except (ConfigCompositionException, OverrideParseException) as exc:
        if user_choice == "1":
            raise
        error = explain_composition_error(exc, Path(config_dir), run_schemas)
        print(f"{program}: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    finally:
        if user_choice is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_choice
        skip_collector_at_exit()


def skip_collector_at_exit() -> None:
    """Freeze every object alive now, so the interpreter's teardown does not walk them.

    Python's shutdown runs the cyclic collector while it clears modules; after importing torch
    and Lightning (with torchmetrics, transformers, ...) that walk of ~5x10^5 objects took
    ~1.2 s of a 15 s run on 2 cores (``experiments/bench/RESULTS.md``). Frozen objects are
    skipped; atexit handlers (loggers, wandb), stream flushing and module cleanup still run.
    """
    gc.freeze()


def explain_composition_error(
    exc: Exception, config_dir: Path, run_schemas: bool = True
) -> ConfigError:
    """Our error for a Hydra composition exception: unknown key, unknown choice, bad syntax."""
    from hydra.errors import MissingConfigException, OverrideParseException

    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OverrideParseException):
        override = re.search(r"override '([^']*)'", first_line)
        return ConfigError(
            override.group(1) if override else "command line",
            "cannot parse this override",
            "write key=value (see https://hydra.cc/docs/advanced/override_grammar/basic)",
        )
    if isinstance(exc, MissingConfigException):
        missing = _MISSING.search(str(exc))
        if missing:
            return unknown_choice(missing.group(1), config_dir)
        return ConfigError("defaults", first_line)
    appended = re.search(r"An item is already at '([^']+)'", str(exc))
    if appended:
        return ConfigError(
            appended.group(1), "already exists; '+' only adds new keys", "drop the '+'"
        )
    full_key = getattr(exc.__cause__, "full_key", None)
    if full_key and run_schemas:
        return unknown_key(str(full_key))
    if full_key:
        return ConfigError(str(full_key), "unknown key", f"check the key against {config_dir}")
    return ConfigError("command line", first_line)


def unknown_choice(option_path: str, config_dir: Path) -> ConfigError:
    """``strategy=[nosuch]`` / ``experiment=seq-mnist/nosuch``: list the files that exist."""
    group, _, name = option_path.partition("/")
    folder = config_dir / group
    sub = Path(name).parent

    def listed(root: Path) -> list[str]:  # files starting with '_' are shared bases, not choices
        names = (p.relative_to(folder).with_suffix("") for p in root.rglob("*.yaml"))
        return sorted(str(n) for n in names if not n.name.startswith("_"))

    options = listed(folder / sub)
    if not options and sub != Path("."):
        options = listed(folder)
    fix = (
        f"valid choices are: {', '.join(options)}"
        if options
        else f"no config group '{group}' exists (see {config_dir})"
    )
    if group == "strategy":
        fix += " (or a plug-in of yours: its module in extra_modules, its YAML in --config-dir)"
    return ConfigError(group, f"unknown choice '{name}'", fix)


def unknown_key(missing: str) -> ConfigError:
    """``strategy.derpp.alpah=1``: name the key and list the valid keys of its section.

    ``missing`` is the first key of the override that the composed config lacks: a key under a
    strategy that is not selected is missing at ``strategy.<name>``.
    """
    parts = missing.split(".")
    if len(parts) == 2 and parts[0] == "strategy":
        known = _strategy_known(parts[1])
        return ConfigError(
            missing,
            "this strategy is not selected" if known else f"no strategy '{parts[1]}' exists",
            f"select it in the list, e.g. strategy=[...,{parts[1]}], then set its keys without '+'"
            if known
            else f"valid strategies are: {', '.join(_strategies())}",
        )
    valid = section_keys(parts[:-1])
    fix = f"valid keys are: {', '.join(valid)}" if valid else "check the key against its YAML file"
    return ConfigError(missing, "unknown key", fix)


def _strategies() -> list[str]:
    from cl_framework.strategies.registry import available_strategies

    return available_strategies()


def _strategy_known(name: str) -> bool:
    return name in _strategies()


def section_keys(path: list[str]) -> list[str] | None:
    """The valid keys under a dotted config path, from the schemas (None where none is known)."""
    from cl_framework import run_config
    from cl_framework.engine.optim import OptimizerConfig
    from cl_framework.engine.runner import TrainerConfig

    if not path:
        return list(run_config.TOP_LEVEL)
    head, rest = path[0], path[1:]
    schema: Any = {
        "scenario": run_config.ScenarioConfig,
        "buffer": run_config.BufferConfig,
        "optimizer": OptimizerConfig,
        "trainer": TrainerConfig,
        "paths": run_config.PathsConfig,
    }.get(head)
    if head == "strategy" and rest:
        from cl_framework.strategies.registry import strategy_class

        try:
            schema, rest = strategy_class(rest[0]).Config, rest[1:]
        except ConfigError:
            return None
    elif head == "logger" and rest:
        schema, rest = run_config.LOGGER_SCHEMAS.get(rest[0]), rest[1:]
    for part in rest:  # nested dataclass sections, e.g. scenario.random_resized_crop
        if schema is None:
            return None
        hints = typing.get_type_hints(schema)
        schema = next(
            (a for a in typing.get_args(hints.get(part)) or (hints.get(part),) if _is_schema(a)),
            None,
        )
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    return [f.name for f in dataclasses.fields(schema)]


def _is_schema(candidate: Any) -> bool:
    return isinstance(candidate, type) and dataclasses.is_dataclass(candidate)


def check_added_strategies(task_overrides: list[str], config_name: str, config_dir: Path) -> None:
    """Reject ``+strategy.<name>...`` for a strategy with a config file that the run does not
    select.

    Such an override composes (it adds the node) and would silently enable the strategy with
    its dataclass defaults for every key not given, skipping its YAML. Plug-ins without a file
    in the ``strategy`` group (test probes, ``extra_modules`` without a config dir) can only be
    added this way and stay allowed. Called inside the Hydra app, with its overrides.
    """
    added = {}
    for override in task_overrides:
        key = override.lstrip("+").split("=", 1)[0]
        parts = key.split(".")
        is_added_strategy = override.startswith("+") and parts[0] == "strategy" and len(parts) > 1
        if is_added_strategy and (Path(config_dir) / "strategy" / f"{parts[1]}.yaml").is_file():
            added[override] = parts[1]
    if not added:
        return
    from hydra import compose

    others = [o for o in task_overrides if o not in added]
    selected = list(compose(config_name=config_name, overrides=others).get("strategy") or {})
    for override, name in added.items():
        if name not in selected:
            raise ConfigError(
                f"strategy.{name}",
                f"'{override}' would enable strategy '{name}', which the run does not select "
                f"(selected: {selected})",
                f"select it in the list, e.g. strategy=[{','.join([*selected, name])}], "
                "and set its keys without '+'",
            )
