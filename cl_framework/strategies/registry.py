"""Strategy registry: ``strategy=[name, ...]`` in a config builds these plug-ins in order.

Every module inside ``cl_framework.strategies`` is imported on first use, so a new built-in
strategy is one module (with ``@register_strategy``) plus one config file. Plug-ins living in
other packages are made known with the top-level config key ``extra_modules``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from cl_framework.config_schema import validate_node
from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.errors import ConfigError

_STRATEGIES: dict[str, type[StrategyPlugin]] = {}
_ALIASES = {"sgd": "finetune", "der++": "derpp", "er-ace": "er_ace", "ewc": "ewc_on"}


def register_strategy(cls: type[StrategyPlugin]) -> type[StrategyPlugin]:
    """Class decorator: register a plug-in under its ``name`` class attribute."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty 'name' class attribute")
    if cls.name in _STRATEGIES and _STRATEGIES[cls.name] is not cls:
        raise ValueError(f"strategy '{cls.name}' is already registered")
    _STRATEGIES[cls.name] = cls
    return cls


def import_strategy_modules(extra_modules: Iterable[str] = ()) -> None:
    """Import the built-in strategy modules and the user's ``extra_modules``."""
    package = importlib.import_module("cl_framework.strategies")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "registry":
            importlib.import_module(f"cl_framework.strategies.{info.name}")
    for name in extra_modules:
        import_user_module(name)


def import_user_module(entry: str) -> ModuleType:
    """One ``extra_modules`` entry: a ``.py`` file path, or a module name importable from the
    current directory (as with ``python -m``) or the environment. No PYTHONPATH needed."""
    if entry.endswith(".py"):
        path = Path(entry).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                "extra_modules", f"no file '{entry}' (from {Path.cwd()})", "check the path"
            )
        loaded = sys.modules.get(path.stem)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            del sys.modules[path.stem]
            raise ConfigError("extra_modules", f"'{entry}' failed to import: {exc}") from exc
        return module
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file never shadows them
    try:
        return importlib.import_module(entry)
    except ImportError as exc:
        raise ConfigError(
            "extra_modules",
            f"cannot import '{entry}': {exc}",
            "give a module importable from the current directory, or a path to a .py file",
        ) from exc


def available_strategies() -> list[str]:
    import_strategy_modules()
    return sorted(_STRATEGIES)


def strategy_class(name: str) -> type[StrategyPlugin]:
    import_strategy_modules()
    key = _ALIASES.get(name, name)
    if key not in _STRATEGIES:
        raise ConfigError(
            "strategy",
            f"unknown strategy '{name}'",
            f"use one of {sorted(_STRATEGIES)} (or register yours with @register_strategy "
            "and list its module in extra_modules)",
        )
    return _STRATEGIES[key]


def build_strategies(node: Mapping[str, Any] | None) -> list[StrategyPlugin]:
    """Plug-ins for a ``strategy`` config node ``{name: {hyper-parameters}}``, in order."""
    if not node:
        raise ConfigError(
            "strategy", "no strategy selected", "pick one, e.g. strategy=[finetune] or [derpp]"
        )
    plugins = []
    for name, params in node.items():
        cls = strategy_class(str(name))
        cfg = validate_node(params or {}, cls.Config, f"strategy.{name}")
        plugins.append(cls(cfg))
    return plugins
