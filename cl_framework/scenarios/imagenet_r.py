"""ImageNet-R (Hendrycks et al. 2021) from its published archive ``imagenet-r.tar``.

Layout::

    <data_dir>/imagenet-r/<wnid>/*.jpg      200 ImageNet classes, 30000 renditions in all

The dataset has no official train/test split. As in the continual-learning literature (CODA-Prompt,
Mammoth's ``seq-imagenet-r``) a random 80/20 split is drawn; here it is stratified per class and
seeded (``test_fraction``, ``split_seed``), so it is identical on every machine but not the
same file list as those code bases (CODA-Prompt ships its own split files, which are not used
here): accuracies are not directly comparable with numbers reported on that split. Class k is
the k-th wnid in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_framework.scenarios.disk import Storage, load_image_splits
from cl_framework.scenarios.download import (
    DEFAULT_TIMEOUT_S,
    Archive,
    DatasetLayout,
    ensure_dataset,
)
from cl_framework.scenarios.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    parse_size,
    scan_class_folders,
    stratified_split,
)
from cl_framework.scenarios.sources import DataSource, register_source, resolve_class_selection

IMAGENET_R_ARCHIVE = Archive(
    "imagenet-r.tar",
    ("https://people.eecs.berkeley.edu/~hendrycks/",),
    "a61312130a589d0ca1a8fca1f2bd3337",
)
IMAGENET_R_LAYOUT = DatasetLayout(
    name="ImageNet-R",
    folder="imagenet-r",
    markers=(),
    description="one folder per wnid holding its .jpg renditions, as extracted from "
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
)


@register_source("imagenet-r")
def load_imagenet_r(
    data_dir: Path,
    *,
    size: Any = 224,
    interpolation: str = "bilinear",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    classes: Any = None,
    exclude_classes: Any = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    storage: Storage | None = None,
) -> DataSource:
    """ImageNet-R, 200 classes, a seeded stratified train/test split, resized to ``size``."""
    root = ensure_dataset(
        IMAGENET_R_LAYOUT,
        IMAGENET_R_ARCHIVE,
        data_dir,
        download=download,
        mirrors=mirrors,
        timeout_s=timeout_s,
    )
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    selected = [wnids[c] for c in resolve_class_selection(wnids, classes, exclude_classes)]
    paths, labels = scan_class_folders(
        root, selected, "ImageNet-R", fix="re-extract imagenet-r.tar"
    )
    label_array = np.asarray(labels)
    test_mask = stratified_split(
        label_array, test_fraction, split_seed, "scenario.source_options.test_fraction"
    )
    xs = load_image_splits(
        {
            "train": [p for p, t in zip(paths, test_mask, strict=True) if not t],
            "test": [p for p, t in zip(paths, test_mask, strict=True) if t],
        },
        parse_size(size),
        interpolation=interpolation,
        workers=workers,
        what="ImageNet-R",
        storage=storage,
    )
    y = torch.from_numpy(label_array.astype(np.int64))
    mask = torch.from_numpy(test_mask)
    return DataSource(
        name="imagenet-r",
        train_x=xs["train"],
        train_y=y[~mask],
        test_x=xs["test"],
        test_y=y[mask],
        class_names=tuple(selected),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
