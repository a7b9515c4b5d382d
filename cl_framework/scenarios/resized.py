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

``train_fold: [k, n]`` keeps fold ``k`` of ``n`` disjoint, class-stratified folds of the
training set (seeded by ``subset_seed``): e.g. a benchmark on fold 0 of MNIST and an auxiliary
stream on fold 1 see the same classes but never the same image (the auxiliary-stream
experiment with related auxiliary data, ``experiments/auxiliary``). The test split is kept.
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


def _ranks_within_class(y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded order of the rows and each ordered row's rank among the rows of its label."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    shuffled = y[order]
    by_label = torch.argsort(shuffled, stable=True)
    sorted_labels = shuffled[by_label]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(y)
    rank[by_label] = torch.arange(len(y)) - first
    return order, rank


def per_class_subset(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``per_class`` rows of every label, chosen uniformly."""
    order, rank = _ranks_within_class(y, seed)
    return order[rank < per_class].sort().values


def per_class_fold(y: torch.Tensor, fold: int, n_folds: int, seed: int) -> torch.Tensor:
    """Sorted indices of fold ``fold`` of ``n_folds`` disjoint folds, stratified by label."""
    order, rank = _ranks_within_class(y, seed)
    return order[rank % n_folds == fold].sort().values


def _fold(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and value[1] >= 2
        and 0 <= value[0] < value[1]
    )
    if not ok:
        raise ConfigError(
            f"{KEY}.train_fold",
            f"must be [k, n] with n >= 2 and 0 <= k < n, got {value!r}",
            "e.g. [0, 2] for the first half of every class",
        )
    return int(value[0]), int(value[1])


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
    train_fold: Sequence[int] | None = None,
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
    fold = _fold(train_fold)
    source = load_source(base, data_dir, **dict(base_options or {}))
    if fold is not None:
        keep = per_class_fold(source.train_y, fold[0], fold[1], subset_seed * 2 + 7)
        source = replace(source, train_x=source.train_x[keep], train_y=source.train_y[keep])
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
