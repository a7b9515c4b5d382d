"""Tiny-ImageNet-200 from its published folder layout (``tiny-imagenet-200.zip``).

Layout::

    <data_dir>/tiny-imagenet-200/
        wnids.txt                               200 WordNet ids, one per line
        words.txt                               (optional) wnid <tab> names, for all ImageNet
        train/<wnid>/images/<wnid>_<k>.JPEG     500 training images per class, 64x64
        val/images/val_<k>.JPEG                 10000 validation images (50 per class)
        val/val_annotations.txt                 file <tab> wnid <tab> x0 <tab> y0 <tab> x1 <tab> y1

The labelled validation set is the test set (the official ``test/`` images carry no labels).
Class k is the k-th wnid in sorted order (the order of an ImageFolder over ``train/``); class
names are the wnids. ``classes`` / ``exclude_classes`` select classes before any image is decoded
(``seq-tinyimagenet-half`` uses classes ``"0:100"``, its auxiliary set ``"100:200"``).
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
from cl_framework.scenarios.images import list_images, parse_size
from cl_framework.scenarios.sources import DataSource, register_source, resolve_class_selection

TINYIMAGENET_ARCHIVE = Archive(
    "tiny-imagenet-200.zip", ("http://cs231n.stanford.edu/",), "90528d7ca1a48142e341f4ef8d21d0de"
)
TINYIMAGENET_LAYOUT = DatasetLayout(
    name="Tiny-ImageNet",
    folder="tiny-imagenet-200",
    markers=("wnids.txt", "train", "val/val_annotations.txt", "val/images"),
    description="wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt, as extracted from http://cs231n.stanford.edu/tiny-imagenet-200.zip",
)
TINYIMAGENET_MEAN = (0.4802, 0.4480, 0.3975)
TINYIMAGENET_STD = (0.2770, 0.2691, 0.2821)


@register_source("tinyimagenet")
def load_tinyimagenet(
    data_dir: Path,
    *,
    size: Any = 64,
    interpolation: str = "bilinear",
    classes: Any = None,
    exclude_classes: Any = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    storage: Storage | None = None,
) -> DataSource:
    """Tiny-ImageNet: 100000 train / 10000 test (the labelled val set), 200 classes, 64 px."""
    root = ensure_dataset(
        TINYIMAGENET_LAYOUT,
        TINYIMAGENET_ARCHIVE,
        data_dir,
        download=download,
        mirrors=mirrors,
        timeout_s=timeout_s,
    )
    wnids = sorted(_read_wnids(root / "wnids.txt"))
    selected = resolve_class_selection(wnids, classes, exclude_classes)
    label_of = {wnids[c]: k for k, c in enumerate(selected)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for c in selected:
        folder = root / "train" / wnids[c] / "images"
        if not folder.is_dir():
            raise DataError(
                str(folder),
                f"missing: wnids.txt lists '{wnids[c]}' but it has no training folder",
                fix="re-extract tiny-imagenet-200.zip",
            )
        files = list_images(folder)
        if not files:
            raise DataError(str(folder), "holds no images", fix="re-extract tiny-imagenet-200.zip")
        train_paths += files
        train_labels += [label_of[wnids[c]]] * len(files)

    test_paths, test_labels = _read_val(root, set(wnids), label_of)
    target = parse_size(size)
    xs = load_image_splits(
        {"train": train_paths, "test": test_paths},
        target,
        interpolation=interpolation,
        workers=workers,
        what="Tiny-ImageNet",
        storage=storage,
    )
    return DataSource(
        name="tinyimagenet",
        train_x=xs["train"],
        train_y=torch.tensor(train_labels, dtype=torch.int64),
        test_x=xs["test"],
        test_y=torch.tensor(test_labels, dtype=torch.int64),
        class_names=tuple(wnids[c] for c in selected),
        mean=TINYIMAGENET_MEAN,
        std=TINYIMAGENET_STD,
    )


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(
            str(path), "must list distinct wnids, one per line", fix="re-extract the archive"
        )
    return wnids


def _read_val(
    root: Path, known: set[str], label_of: dict[str, int]
) -> tuple[list[Path], list[int]]:
    """Validation images of the selected classes, in annotation-file order."""
    annotations = root / "val" / "val_annotations.txt"
    paths: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in known:
            raise DataError(
                str(annotations),
                f"line {lineno} is not '<file>\\t<wnid>\\t...' with a wnid of wnids.txt: {line!r}",
                fix="re-extract tiny-imagenet-200.zip",
            )
        if fields[1] not in label_of:
            continue
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise DataError(
                str(path),
                f"listed in {annotations.name} line {lineno} but missing",
                fix="re-extract tiny-imagenet-200.zip",
            )
        paths.append(path)
        labels.append(label_of[fields[1]])
    return paths, labels
