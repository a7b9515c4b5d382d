"""Data-source registry: a name -> loader mapping, in the style of timm's model registry.

A source is a whole labelled dataset (train and test) held as uint8 tensors in memory; splitting it
into experiences is :mod:`cl_framework.scenarios.scenario`'s job. New datasets plug in with
``@register_source("name")`` on a loader ``(data_dir, **options) -> DataSource``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cl_framework.errors import ConfigError


@dataclass(frozen=True, eq=False)
class DataSource:
    """A labelled image dataset with a fixed train/test split, images as uint8 (N, C, H, W)."""

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Checked once here so every scenario can rely on these invariants.
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"{split}_x")
            y: torch.Tensor = getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(
                    f"source '{self.name}': {split}_x must be uint8 (N, C, H, W), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
                raise ValueError(
                    f"source '{self.name}': {split}_y must be int64 (N,) with N={len(x)}, "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(
                    f"source '{self.name}': {split}_y values must lie in "
                    f"0..{len(self.class_names) - 1}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"source '{self.name}': train and test images differ in shape")
        channels = self.train_x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"source '{self.name}': mean/std need one value per channel")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))


SourceLoader = Callable[..., DataSource]

_SOURCES: dict[str, SourceLoader] = {}


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Register a loader under ``name``; a duplicate name is a programming error (ValueError)."""

    def decorator(loader: SourceLoader) -> SourceLoader:
        if name in _SOURCES:
            raise ValueError(f"data source '{name}' is already registered")
        _SOURCES[name] = loader
        return loader

    return decorator


def available_sources() -> list[str]:
    """Names of all registered data sources, sorted."""
    return sorted(_SOURCES)


def load_source(name: str, data_dir: str | Path, **options: Any) -> DataSource:
    """Load a registered source; options are passed to its loader (e.g. ``download=False``).

    Unknown names and unknown options raise :class:`ConfigError` so a typo in a config fails
    before any data is read.
    """
    if name not in _SOURCES:
        raise ConfigError(
            "scenario.source",
            f"unknown data source '{name}'",
            fix="use one of: " + ", ".join(available_sources()),
        )
    loader = _SOURCES[name]
    accepted = _keyword_options(loader)
    if accepted is not None:
        for option in options:
            if option not in accepted:
                raise ConfigError(
                    f"scenario.{option}",
                    f"data source '{name}' has no option '{option}'",
                    fix="use one of: " + (", ".join(sorted(accepted)) or "(none)"),
                )
    return loader(Path(data_dir).expanduser(), **options)


def _keyword_options(loader: SourceLoader) -> set[str] | None:
    """Option names a loader accepts after ``data_dir``; None if it takes ``**kwargs``."""
    params = list(inspect.signature(loader).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
