"""Auxiliary datasets: a second stream or a "dream" set next to the benchmark.

Methods such as the auxiliary-knowledge stream (ICPR 2022) and WSCL's REM stage train free heads
on labelled images of classes disjoint from the benchmark. They load those images with
:func:`load_auxiliary`, which returns an ordinary :class:`DataSource` (uint8 tensors, labels
0..k-1, class names), so the strategy decides how to use its train / test parts.

``name`` is any registered source or one of the presets below, which name the auxiliary sets
of the papers:

=====================  =====================================================================
preset                 content
=====================  =====================================================================
cifar100-coarse12      CIFAR-100 superclasses minus the 8 overlapping CIFAR-10 (12 classes)
svhn-extra5000         SVHN ``extra`` split, first 5000 images per digit (aux-knowledge, MNIST)
tinyimagenet-half2     Tiny-ImageNet classes 100..199 (the dream set of Seq-TinyImageNet-1/2)
imagenet100-aux        WSCL's 100 auxiliary ImageNet classes (``imagenet_subset``)
=====================  =====================================================================

Unused classes of a benchmark come from :func:`load_unused_classes`, given the benchmark's
source and source options (e.g. ``tinyimagenet`` with ``classes: "0:100"`` gives classes
100..199).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.sources import (
    CLASS_SELECTION_OPTIONS,
    DataSource,
    available_sources,
    load_source,
    resolve_class_selection,
)

AUXILIARY_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "cifar100-coarse12": ("cifar100-coarse12", {}),
    "svhn-extra5000": ("svhn", {"train_split": "extra", "max_train_per_class": 5000}),
    "tinyimagenet-half2": ("tinyimagenet", {"classes": "100:200"}),
    "imagenet100-aux": ("imagenet_subset", {"class_list": "imagenet100-aux"}),
}


def load_auxiliary(
    name: str,
    data_dir: str | Path,
    *,
    resize_to: tuple[int, int] | None = None,
    to_channels: int | None = None,
    key: str = "auxiliary.name",
    **options: Any,
) -> DataSource:
    """An auxiliary dataset as a DataSource.

    ``name``: a preset of :data:`AUXILIARY_PRESETS` or any registered source (``mnist``,
    ``fashion-mnist``, ``svhn``, ``imagefolder``, ...). ``options`` are the source's options
    (they override the preset's), including the generic ``classes`` / ``exclude_classes``.
    ``resize_to`` = (H, W) and ``to_channels`` (1 or 3) bring the images to the benchmark's input
    shape, e.g. SVHN for Seq-MNIST: ``resize_to=(28, 28), to_channels=1`` (``channels`` and
    ``size`` in ``options`` go to the source, e.g. ``resized``); sources that decode
    files take ``size`` themselves, which is cheaper than resizing afterwards. ``key`` is the
    config key named by the error for an unknown ``name`` (the calling strategy's option).
    """
    if name in AUXILIARY_PRESETS:
        source_name, preset = AUXILIARY_PRESETS[name]
        options = {**preset, **options}
    elif name in available_sources():
        source_name = name
    else:
        raise ConfigError(
            key,
            f"unknown auxiliary dataset '{name}'",
            fix="use a preset ("
            + ", ".join(AUXILIARY_PRESETS)
            + ") or a registered source ("
            + ", ".join(available_sources())
            + ")",
        )
    source = load_source(source_name, data_dir, **options)
    if resize_to is not None or to_channels is not None:
        source = match_input_shape(source, resize_to, to_channels)
    return source


def load_unused_classes(
    source: str,
    data_dir: str | Path,
    source_options: Mapping[str, Any] | None = None,
    **extra_options: Any,
) -> DataSource:
    """The classes of ``source`` that a benchmark built with ``source_options`` does not use.

    The benchmark's ``classes`` / ``exclude_classes`` options are inverted: the result holds
    every class of the full source outside the benchmark's selection, in source order, labelled
    0..k-1. ``extra_options`` override the other source options (e.g. a smaller ``size``).
    """
    options = dict(source_options or {})
    used_spec = {k: options.pop(k) for k in CLASS_SELECTION_OPTIONS if k in options}
    options.update(extra_options)
    full = load_source(source, data_dir, **options)
    used = set(resolve_class_selection(full.class_names, **used_spec))
    unused = [c for c in range(full.n_classes) if c not in used]
    if not unused:
        raise ConfigError(
            "scenario.source_options.classes",
            f"the benchmark uses every class of '{source}', none is left as auxiliary data",
            fix="restrict the benchmark with scenario.source_options.classes",
        )
    from cl_framework.scenarios.sources import select_classes

    return select_classes(full, classes=unused)


def match_input_shape(
    source: DataSource, size: tuple[int, int] | None, channels: int | None
) -> DataSource:
    """``source`` with images resized to ``size`` (bilinear, antialiased) and/or converted to
    ``channels`` (3 -> 1: ITU-R 601 luma; 1 -> 3: replicated)."""
    from dataclasses import replace

    import torch.nn.functional as F

    def convert(x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(x), 8192):
            part = x[start : start + 8192].float()
            if channels is not None and channels != part.shape[1]:
                if channels == 1 and part.shape[1] == 3:
                    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                    part = (part * weights).sum(1, keepdim=True)
                elif channels == 3 and part.shape[1] == 1:
                    part = part.expand(-1, 3, -1, -1)
                else:
                    raise ConfigError("auxiliary.channels", f"cannot convert to {channels}")
            if size is not None and tuple(part.shape[2:]) != tuple(size):
                part = F.interpolate(
                    part, size=tuple(size), mode="bilinear", antialias=True, align_corners=False
                )
            # not in place: a 1 -> 3 channel expand without resize is a view of one channel
            out.append(part.round().clamp(0, 255).to(torch.uint8))
        return torch.cat(out) if out else x

    mean, std = source.mean, source.std
    if channels is not None and channels != len(mean):
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    return replace(
        source, train_x=convert(source.train_x), test_x=convert(source.test_x), mean=mean, std=std
    )
