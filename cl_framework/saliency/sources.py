"""The ``derived`` data source: another source resized and capped per class (quick experiments).

Used by the SAM experiments on Seq-Fashion-MNIST ("upsampled to 32 or 64 px", fixed per-class
subsets of the training and test data so that a CPU can run every seed)::

    scenario:
      source: derived
      source_options: {base: fashion-mnist, size: 32, max_train_per_class: 300,
                       max_test_per_class: 200}

Resizing is bilinear with antialiasing (``auxiliary.match_input_shape``); the subsets are
seeded by ``subset_seed`` only, so every run seed sees the same images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.auxiliary import match_input_shape
from cl_framework.scenarios.images import parse_size
from cl_framework.scenarios.sources import DataSource, load_source, register_source


def per_class_subset(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``per_class`` rows of every label (seeded uniform choice)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    shuffled = y[order]
    sorted_y, by_label = torch.sort(shuffled, stable=True)
    starts = torch.searchsorted(sorted_y, sorted_y)
    rank = torch.empty_like(shuffled)
    rank[by_label] = torch.arange(len(y)) - starts
    return order[rank < per_class].sort().values


@register_source("derived")
def load_derived(
    data_dir: Path,
    *,
    base: str | None = None,
    base_options: dict[str, Any] | None = None,
    size: Any = None,
    channels: int | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    subset_seed: int = 0,
) -> DataSource:
    """``base`` (any registered source) resized to ``size`` and capped per class."""
    key = "scenario.source_options"
    if not base or base == "derived":
        raise ConfigError(f"{key}.base", f"must name another source, got {base!r}")
    source = load_source(base, data_dir, **dict(base_options or {}))
    target = parse_size(size, key=f"{key}.size")
    if target is not None or channels is not None:
        source = match_input_shape(source, target, channels)
    for split, cap in (("train", max_train_per_class), ("test", max_test_per_class)):
        if cap is None:
            continue
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(f"{key}.max_{split}_per_class", f"must be >= 1 or null, got {cap!r}")
        y = getattr(source, f"{split}_y")
        keep = per_class_subset(y, cap, subset_seed + (split == "test"))
        source = replace(
            source, **{f"{split}_x": getattr(source, f"{split}_x")[keep], f"{split}_y": y[keep]}
        )
    return replace(source, name=f"{source.name}-derived")
