"""``resized``: any registered source brought to another input shape, optionally subsampled.

Seq-Fashion-MNIST as TwF's offline benchmark needs 32 x 32 RGB inputs (the CIFAR ResNets and
ImageNet-style siblings expect 3 channels)::

    scenario:
      source: resized
      source_options: {base: fashion-mnist, size: 32, channels: 3}

Images are resized bilinearly (antialiased) and converted 1 <-> 3 channels by
:func:`cl_framework.scenarios.auxiliary.match_input_shape`, once, at load time; they stay uint8.
``max_train_per_class`` / ``max_test_per_class`` keep a seeded random subset of each class
*before* resizing (quick CPU runs; the subset depends only on ``subset_seed``, not on the run
seed, so every strategy and seed sees the same images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.auxiliary import match_input_shape
from cl_framework.scenarios.sources import DataSource, load_source, register_source

KEY = "scenario.source_options"


def per_class_subset(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``per_class`` rows of every label, chosen uniformly."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    shuffled = y[order]
    by_label = torch.argsort(shuffled, stable=True)
    sorted_labels = shuffled[by_label]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(y)
    rank[by_label] = torch.arange(len(y)) - first
    return order[rank < per_class].sort().values


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, bool):
        raise ConfigError(f"{KEY}.size", f"must be an int or [H, W], got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"{KEY}.size", f"must be a positive int or [H, W], got {size!r}")
    return (int(size[0]), int(size[1]))


@register_source("resized")
def load_resized(
    data_dir: Path,
    *,
    base: str | None = None,
    base_options: Mapping[str, Any] | None = None,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    subset_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSource:
    """Source ``base`` (with ``base_options``) resized to ``size`` with ``channels`` channels.

    ``mean`` / ``std`` replace the source's normalisation statistics (one value per output
    channel), e.g. ImageNet's for an ImageNet-pretrained backbone.
    """
    if not base:
        raise ConfigError(f"{KEY}.base", "missing", "name the source to resize, e.g. fashion-mnist")
    if base == "resized":
        raise ConfigError(f"{KEY}.base", "cannot be 'resized' itself")
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"{KEY}.channels", f"must be 1 or 3, got {channels!r}")
    for key, value in (
        ("max_train_per_class", max_train_per_class),
        ("max_test_per_class", max_test_per_class),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{KEY}.{key}", f"must be a positive int or null, got {value!r}")
    source = load_source(base, data_dir, **dict(base_options or {}))
    parts: dict[str, torch.Tensor] = {}
    for split, limit, offset in (
        ("train", max_train_per_class, 0),
        ("test", max_test_per_class, 1),
    ):
        if limit is not None:
            keep = per_class_subset(getattr(source, f"{split}_y"), limit, subset_seed * 2 + offset)
            parts[f"{split}_x"] = getattr(source, f"{split}_x")[keep]
            parts[f"{split}_y"] = getattr(source, f"{split}_y")[keep]
    if parts:
        source = replace(source, **parts)
    target = _size(size)
    if target is not None or channels is not None:
        source = match_input_shape(source, target, channels)
    c, h, w = source.input_shape
    stats = {}
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            if len(value) != c or (key == "std" and min(value) <= 0):
                raise ConfigError(
                    f"{KEY}.{key}", f"needs {c} value(s) (positive for std), got {list(value)}"
                )
            stats[key] = tuple(float(v) for v in value)
    return replace(source, name=f"{source.name}-{h}x{w}x{c}", **stats)
