"""Any image folder with one sub-folder per class (torchvision's ImageFolder layout).

Two layouts are understood::

    <root>/train/<class>/*.png   and   <root>/test/<class>/*.png   (or val/ instead of test/)
    <root>/<class>/*.png         split into train/test by a seeded stratified draw

``root`` is absolute or relative to ``data_dir``. Class k is the k-th class folder in sorted
order. Normalisation statistics are computed from the training images (with
``scenario.storage=disk`` that is one decoding pass over them when the source is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_framework.errors import ConfigError, DataError
from cl_framework.scenarios.disk import Storage, load_image_splits
from cl_framework.scenarios.images import (
    cap_per_class,
    channel_stats,
    parse_size,
    scan_class_folders,
    stratified_split,
)
from cl_framework.scenarios.sources import DataSource, register_source, resolve_class_selection

_FIX = (
    "use <root>/train/<class>/* with <root>/test/<class>/* (or val/), or <root>/<class>/* "
    "with scenario.source_options.test_fraction"
)


@register_source("imagefolder")
def load_imagefolder(
    data_dir: Path,
    *,
    root: str | None = None,
    size: Any = None,
    channels: int = 3,
    interpolation: str = "bilinear",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    max_train_per_class: int | None = None,
    classes: Any = None,
    exclude_classes: Any = None,
    workers: int | None = None,
    storage: Storage | None = None,
) -> DataSource:
    """Class folders under ``root`` as a source; ``size=None`` needs equally sized images.

    ``storage`` (``scenario.storage``): decode into memory, or keep the files and decode batch
    by batch (:mod:`cl_framework.scenarios.disk`)."""
    if root is None:
        raise ConfigError(
            "scenario.source_options.root",
            "the imagefolder source needs the folder to read",
            fix="set scenario.source_options.root=<folder> (absolute or under paths.data_dir)",
        )
    if channels not in (1, 3):
        raise ConfigError("scenario.source_options.channels", f"must be 1 or 3, got {channels!r}")
    base = Path(root).expanduser()
    if not base.is_absolute():
        base = data_dir / base
    if not base.is_dir():
        raise DataError(str(base), "image folder not found", fix=_FIX)
    test_dir = next((base / n for n in ("test", "val") if (base / n).is_dir()), None)
    split_folders = (base / "train").is_dir() and test_dir is not None
    train_base = base / "train" if split_folders else base
    names = sorted(p.name for p in train_base.iterdir() if p.is_dir())
    if not names:
        raise DataError(str(train_base), "holds no class folders", fix=_FIX)
    selected = [names[c] for c in resolve_class_selection(names, classes, exclude_classes)]
    paths, labels = scan_class_folders(train_base, selected, "image folder", _FIX)
    target = parse_size(size)

    def decode(train_files: list[Path], test_files: list[Path]) -> tuple[Any, Any]:
        xs = load_image_splits(
            {"train": train_files, "test": test_files},
            target,
            interpolation=interpolation,
            channels=channels,
            workers=workers,
            what=f"image folder '{base}'",
            storage=storage,
        )
        return xs["train"], xs["test"]

    key = "scenario.source_options.max_train_per_class"
    if split_folders:
        assert test_dir is not None
        train_paths, train_labels = cap_per_class(paths, labels, max_train_per_class, key)
        test_paths, test_labels = scan_class_folders(test_dir, selected, "image folder", _FIX)
        train_x, test_x = decode(train_paths, test_paths)
        if target is None and train_x.shape[2:] != test_x.shape[2:]:
            raise DataError(
                str(test_dir),
                "test images differ in size from training images",
                fix="set scenario.source_options.size",
            )
        train_y = torch.tensor(train_labels, dtype=torch.int64)
        test_y = torch.tensor(test_labels, dtype=torch.int64)
    else:
        test_mask = stratified_split(
            np.asarray(labels), test_fraction, split_seed, "scenario.source_options.test_fraction"
        )
        test_paths = [p for p, t in zip(paths, test_mask, strict=True) if t]
        test_labels = [lab for lab, t in zip(labels, test_mask, strict=True) if t]
        train_paths = [p for p, t in zip(paths, test_mask, strict=True) if not t]
        train_labels = [lab for lab, t in zip(labels, test_mask, strict=True) if not t]
        train_paths, train_labels = cap_per_class(
            train_paths, train_labels, max_train_per_class, key
        )
        train_x, test_x = decode(train_paths, test_paths)
        train_y = torch.tensor(train_labels, dtype=torch.int64)
        test_y = torch.tensor(test_labels, dtype=torch.int64)
    mean, std = channel_stats(train_x)
    return DataSource(
        name=f"imagefolder:{base.name}",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=tuple(selected),
        mean=mean,
        std=std,
    )
