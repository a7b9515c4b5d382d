"""Caltech-UCSD Birds-200-2011 from its published archive ``CUB_200_2011.tgz``.

Layout::

    <data_dir>/CUB_200_2011/
        images/<nnn.Class_Name>/*.jpg
        images.txt              <image id> <path relative to images/>
        image_class_labels.txt  <image id> <class id 1..200>
        train_test_split.txt    <image id> <1 = train, 0 = test>
        classes.txt             <class id> <nnn.Class_Name>

The official split has 5994 training and 5794 test images. Class k is class id k+1; its name is
the folder name without the number prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cl_framework.errors import DataError
from cl_framework.scenarios.disk import Storage, load_image_splits
from cl_framework.scenarios.download import (
    DEFAULT_TIMEOUT_S,
    Archive,
    DatasetLayout,
    ensure_dataset,
)
from cl_framework.scenarios.images import IMAGENET_MEAN, IMAGENET_STD, parse_size
from cl_framework.scenarios.sources import DataSource, register_source, resolve_class_selection

CUB_ARCHIVE = Archive(
    "CUB_200_2011.tgz",
    ("https://data.caltech.edu/records/65de6-vp158/files/",),
    "97eceeb196236b17998738112f37df78",
)
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
CUB_LAYOUT = DatasetLayout(
    name="CUB-200-2011",
    folder="CUB_200_2011",
    markers=("images", *CUB_FILES),
    description="images/<nnn.Class>/*.jpg, " + ", ".join(CUB_FILES) + ", as extracted from "
    "CUB_200_2011.tgz (https://data.caltech.edu/records/65de6-vp158)",
)
_FIX = "re-extract CUB_200_2011.tgz"


@register_source("cub200")
def load_cub200(
    data_dir: Path,
    *,
    size: Any = 224,
    interpolation: str = "bilinear",
    classes: Any = None,
    exclude_classes: Any = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    storage: Storage | None = None,
) -> DataSource:
    """CUB-200-2011 with its official train/test split, resized to ``size``."""
    root = ensure_dataset(
        CUB_LAYOUT, CUB_ARCHIVE, data_dir, download=download, mirrors=mirrors, timeout_s=timeout_s
    )
    images = _read_table(root / "images.txt")
    class_of = _read_table(root / "image_class_labels.txt")
    is_train = _read_table(root / "train_test_split.txt")
    class_table = _read_table(root / "classes.txt")
    n_classes = len(class_table)
    names = []
    for class_id in range(1, n_classes + 1):
        if str(class_id) not in class_table:
            raise DataError(str(root / "classes.txt"), f"class id {class_id} missing", fix=_FIX)
        raw = class_table[str(class_id)]
        names.append(raw.split(".", 1)[1] if "." in raw else raw)
    selected = resolve_class_selection(names, classes, exclude_classes)
    label_of = {c + 1: k for k, c in enumerate(selected)}

    split_paths: dict[bool, list[Path]] = {True: [], False: []}
    split_labels: dict[bool, list[int]] = {True: [], False: []}
    for image_id, rel in images.items():
        if image_id not in class_of or image_id not in is_train:
            raise DataError(
                str(root), f"image id {image_id} lacks a class or a split entry", fix=_FIX
            )
        class_id = int(class_of[image_id])
        if not 1 <= class_id <= n_classes:
            raise DataError(
                str(root / "image_class_labels.txt"),
                f"image {image_id}: class id {class_id} outside 1..{n_classes}",
                fix=_FIX,
            )
        if class_id not in label_of:
            continue
        train = is_train[image_id] == "1"
        split_paths[train].append(root / "images" / rel)
        split_labels[train].append(label_of[class_id])
    target = parse_size(size)
    xs = load_image_splits(
        {"train": split_paths[True], "test": split_paths[False]},
        target,
        interpolation=interpolation,
        workers=workers,
        what="CUB",
        storage=storage,
    )
    return DataSource(
        name="cub200",
        train_x=xs["train"],
        train_y=torch.tensor(split_labels[True], dtype=torch.int64),
        test_x=xs["test"],
        test_y=torch.tensor(split_labels[False], dtype=torch.int64),
        class_names=tuple(names[c] for c in selected),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _read_table(path: Path) -> dict[str, str]:
    """``<id> <value>`` lines as a dict (values may contain no spaces in the official files)."""
    table: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(str(path), f"line {lineno} is not '<id> <value>': {line!r}", fix=_FIX)
        table[parts[0]] = parts[1].strip()
    return table
