"""Validation of config nodes against dataclass schemas, with one clear error per problem.

Each config section (scenario, trainer, optimizer, buffer, each strategy, ...) has a dataclass
schema. A node is merged into the schema with OmegaConf's structured configs, which rejects
unknown keys and values of the wrong type; the error is re-raised as a
:class:`~cl_framework.errors.ConfigError` that names the full dotted key and lists valid keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from cl_framework.errors import ConfigError

T = TypeVar("T")


def validate_node(node: Any, schema: type[T], prefix: str) -> T:
    """Return an instance of dataclass ``schema`` filled from ``node`` (dict or DictConfig)."""
    if node is None:
        node = {}
    if not isinstance(node, Mapping | DictConfig):
        raise ConfigError(prefix, f"expected a mapping of keys, got {type(node).__name__}")
    valid = [f.name for f in dataclasses.fields(schema)]  # type: ignore[arg-type]
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    for key in plain:
        if key not in valid:
            raise ConfigError(
                f"{prefix}.{key}",
                "unknown key",
                f"valid keys are: {', '.join(valid) or '(none)'}",
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ValidationError as exc:
        key = f"{prefix}.{exc.full_key}" if exc.full_key else prefix
        raise ConfigError(key, f"wrong type or value ({exc.msg.splitlines()[0]})") from None
    except ConfigKeyError as exc:  # pragma: no cover - caught by the key check above
        raise ConfigError(f"{prefix}.{exc.full_key}", "unknown key") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(prefix, str(exc).splitlines()[0]) from None


def check_top_level(plain: Mapping[str, Any], allowed: Mapping[str, str] | tuple[str, ...]) -> int:
    """Reject unknown top-level keys and return the integer ``seed`` (default 0)."""
    for key in plain:
        if key not in allowed:
            raise ConfigError(key, "unknown top-level key", f"valid keys are: {', '.join(allowed)}")
    seed = plain.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")
    return seed
