"""Backbone registry: name -> factory, built from a config mapping with one clear error per bad key.

A factory is a ``Backbone`` subclass or a function returning one. Its signature is the schema:
every config key except ``name`` must be one of its parameters, parameters without default are
required, and ``input_shape`` is supplied by the registry (it comes from the scenario, not the
user). Names ``timm:<model>`` build any timm model through :class:`TimmBackbone`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from cl_framework.errors import ConfigError

from .taps import Backbone
from .timm_backbone import TimmBackbone

BackboneFactory = Callable[..., Backbone]

TIMM_PREFIX = "timm:"
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering a ``Backbone`` class or factory function under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"backbone names starting with '{TIMM_PREFIX}' are reserved for timm")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(
                f"backbone '{name}' is already registered (by {_REGISTRY[name]!r}); "
                "choose another name"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    """Registered backbone names, sorted (``timm:<model>`` names are accepted in addition)."""
    return sorted(_REGISTRY)


def _to_plain_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Plain dict from a dict or an OmegaConf ``DictConfig`` (interpolations resolved)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # omegaconf is optional for library use
        return dict(cfg)
    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        return {str(k): v for k, v in container.items()}
    return dict(cfg)


def _names_hint() -> str:
    return "use one of: " + ", ".join([*available_backbones(), f"{TIMM_PREFIX}<model>"])


def _check_type(key: str, value: Any, default: Any, backbone: str) -> None:
    """Reject values whose type differs from the parameter's simple default (int/float/bool/str).

    Uses the default rather than the annotation so that string annotations need no evaluation.
    """
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    expected = type(default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is str:
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise ConfigError(
            f"backbone.{key}",
            f"expected {expected.__name__} for backbone '{backbone}', got {value!r}",
            fix=f"set backbone.{key} to a {expected.__name__} (default {default!r})",
        )


def _call_factory(
    display_name: str,
    factory: BackboneFactory,
    params: dict[str, Any],
    supplied: dict[str, Any],
) -> Backbone:
    """Validate ``params`` against ``factory``'s signature, then call it.

    ``supplied`` holds what the registry fills itself (``input_shape``, timm's ``model_name``);
    a config may not set those, and each is passed only if the factory takes it.
    """
    signature = inspect.signature(factory)
    accepted = {
        p.name: p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    user_keys = sorted(k for k in accepted if k not in supplied)
    valid = ", ".join(["name", *user_keys])

    for key, value in params.items():
        if key in supplied:
            raise ConfigError(
                f"backbone.{key}",
                f"'{key}' is set by the framework, not by the config",
                fix=f"remove backbone.{key}",
            )
        if key not in accepted and not has_var_kw:
            raise ConfigError(
                f"backbone.{key}",
                f"unknown key for backbone '{display_name}'",
                fix=f"valid keys: {valid}",
            )
        if key in accepted:
            _check_type(key, value, accepted[key].default, display_name)

    for pname, param in accepted.items():
        if pname in supplied or pname in params or param.default is not param.empty:
            continue
        raise ConfigError(
            f"backbone.{pname}",
            f"required by backbone '{display_name}' but not set",
            fix=f"add backbone.{pname} to the config",
        )

    kwargs = {k: v for k, v in supplied.items() if k in accepted or has_var_kw}
    kwargs.update(params)
    backbone = factory(**kwargs)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"factory of backbone '{display_name}' returned {type(backbone).__name__}, "
            "expected a cl_framework.backbones.Backbone"
        )
    return backbone


def build_backbone(cfg: Mapping[str, Any], input_shape: tuple[int, int, int]) -> Backbone:
    """Build the backbone named ``cfg['name']`` for inputs of shape ``input_shape`` (C, H, W).

    Raises :class:`ConfigError` naming the key for an unknown name, an unknown or missing
    parameter, or a value of the wrong type.
    """
    params = _to_plain_dict(cfg)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError("backbone.name", f"missing or not a string: {name!r}", fix=_names_hint())
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")

    if name.startswith(TIMM_PREFIX):
        model_name = name[len(TIMM_PREFIX) :]
        if not model_name:
            raise ConfigError("backbone.name", "empty timm model name", fix="e.g. timm:resnet18")
        supplied = {"model_name": model_name, "input_shape": shape}
        return _call_factory(name, TimmBackbone, params, supplied)

    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError("backbone.name", f"unknown backbone '{name}'", fix=_names_hint())
    return _call_factory(name, factory, params, {"input_shape": shape})
