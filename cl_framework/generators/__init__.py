"""Frozen conditional generators (Dream2Learn's dream source) and their registry.

``load_generator(config)`` builds one from the ``strategy.d2l.generator`` node::

    {backend: tiny_diffusion, path: outputs/generators/generator-fashion-mnist.pt, options: {}}
    {backend: diffusers, path: runwayml/stable-diffusion-v1-5, options: {n_tokens: 4, ...}}

A backend is a function ``(path, options, device) -> ConditionalGenerator``; third-party
backends register with :func:`register_backend` (e.g. from a module listed in ``extra_modules``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from cl_framework.errors import ConfigError
from cl_framework.generators.base import ConditionalGenerator, match_shape, seeded_noise

BackendLoader = Callable[[str | None, Mapping[str, Any], torch.device], ConditionalGenerator]

_BACKENDS: dict[str, BackendLoader] = {}
#: Built-in backends, imported on first use (diffusers is an optional extra).
_BUILTIN = {
    "tiny_diffusion": "cl_framework.generators.tiny_diffusion",
    "diffusers": "cl_framework.generators.diffusers_backend",
}


def register_backend(name: str, loader: BackendLoader) -> BackendLoader:
    """Make ``loader`` available as ``generator.backend=<name>``."""
    _BACKENDS[name] = loader
    return loader


def load_generator(
    config: Mapping[str, Any], device: torch.device | str = "cpu", key: str = "generator"
) -> ConditionalGenerator:
    """The frozen generator described by ``config``; errors name ``<key>.<field>``."""
    backend = config.get("backend")
    if backend not in _BACKENDS and backend in _BUILTIN:
        importlib.import_module(_BUILTIN[backend])
    if backend not in _BACKENDS:
        raise ConfigError(
            f"{key}.backend",
            f"unknown generator backend {backend!r}",
            f"use one of {sorted({*_BUILTIN, *_BACKENDS})} or register yours with "
            "cl_framework.generators.register_backend",
        )
    loader = _BACKENDS[backend]
    generator = loader(config.get("path"), dict(config.get("options") or {}), torch.device(device))
    return generator.freeze()


__all__ = [
    "ConditionalGenerator",
    "load_generator",
    "match_shape",
    "register_backend",
    "seeded_noise",
]
