"""ImageNet subsets: an ImageNet-style folder plus a class list shipped as data.

Layout (the usual ILSVRC-2012 layout after sorting the validation images into class folders, e.g.
with the PyTorch examples' ``valprep.sh``; the ``images/`` level used by the SER / WSCL code is
also accepted)::

    <data_dir>/<folder>/train/<wnid>/*.JPEG      training images of class <wnid>
    <data_dir>/<folder>/val/<wnid>/*.JPEG        validation images (the test set)
    or  <data_dir>/<folder>/images/{train,val}/<wnid>/*.JPEG

``folder`` defaults to ``imagenet``. Only the listed classes need to be present. ImageNet cannot
be downloaded automatically (it needs an account at image-net.org).

Class lists are text files with one WordNet id per line (``#`` comments and blank lines are
skipped); line k is class k, so contiguous blocks form the experiences. Shipped lists, in
``cl_framework/scenarios/class_lists/`` (see each file's header for its provenance):

- ``miniimagenet``: the 100 mini-ImageNet classes (Seq-miniImageNet of SER / D2L);
- ``fg-imagenet``: the 100 fine-grained animal classes of SER and WSCL;
- ``imagenet100-aux``: WSCL's 100 auxiliary object classes (disjoint from ``fg-imagenet``).

Any other list is given by path (absolute, or relative to ``data_dir``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cl_framework.errors import ConfigError, DataError
from cl_framework.scenarios.disk import Storage, load_image_splits
from cl_framework.scenarios.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cap_per_class,
    parse_size,
    scan_class_folders,
)
from cl_framework.scenarios.sources import DataSource, register_source, resolve_class_selection

SHIPPED_CLASS_LISTS = ("miniimagenet", "fg-imagenet", "imagenet100-aux")

_LAYOUT_HELP = (
    "expected <data_dir>/{folder}/train/<wnid>/*.JPEG and <data_dir>/{folder}/val/<wnid>/*.JPEG "
    "(validation images sorted into class folders), or the same under {folder}/images/"
)


def read_class_list(name_or_path: str, data_dir: Path | None = None) -> list[str]:
    """The wnids of a shipped class list (by name) or of a list file (by path)."""
    if name_or_path in SHIPPED_CLASS_LISTS:
        text = (
            resources.files("cl_framework.scenarios")
            .joinpath("class_lists", f"{name_or_path}.txt")
            .read_text()
        )
        origin = f"shipped class list '{name_or_path}'"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_absolute() and data_dir is not None:
            path = data_dir / path
        if not path.is_file():
            raise ConfigError(
                "scenario.source_options.class_list",
                f"'{name_or_path}' is neither a shipped class list nor a file ({path})",
                fix="use one of " + ", ".join(SHIPPED_CLASS_LISTS) + ", or the path of a text "
                "file with one wnid per line",
            )
        text = path.read_text()
        origin = str(path)
    wnids = [
        line.split()[0]
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(origin, "must list distinct wnids, one per line", fix="fix the list file")
    return wnids


@register_source("imagenet_subset")
def load_imagenet_subset(
    data_dir: Path,
    *,
    class_list: str = "miniimagenet",
    folder: str = "imagenet",
    size: Any = 84,
    interpolation: str = "bilinear",
    max_train_per_class: int | None = None,
    classes: Any = None,
    exclude_classes: Any = None,
    workers: int | None = None,
    storage: Storage | None = None,
) -> DataSource:
    """The classes of ``class_list`` from an ImageNet-style folder, resized to ``size``.

    ``max_train_per_class`` keeps the first n training files (sorted by name) of every class,
    e.g. 600 for the usual mini-ImageNet size or to fit a higher resolution in memory.
    """
    wnids = read_class_list(class_list, data_dir)
    selected = [wnids[c] for c in resolve_class_selection(wnids, classes, exclude_classes)]
    train_root, val_root = _find_split_folders(data_dir, folder)
    fix = _LAYOUT_HELP.format(folder=folder) + f"; the class list is '{class_list}'"
    train_paths, train_labels = scan_class_folders(train_root, selected, "ImageNet train", fix)
    train_paths, train_labels = cap_per_class(
        train_paths,
        train_labels,
        max_train_per_class,
        "scenario.source_options.max_train_per_class",
    )
    test_paths, test_labels = scan_class_folders(val_root, selected, "ImageNet val", fix)
    target = parse_size(size)
    what = f"ImageNet subset '{class_list}'"
    xs = load_image_splits(
        {"train": train_paths, "test": test_paths},
        target,
        interpolation=interpolation,
        workers=workers,
        what=what,
        storage=storage,
    )
    return DataSource(
        name=f"imagenet_subset:{Path(class_list).stem}",
        train_x=xs["train"],
        train_y=torch.tensor(train_labels, dtype=torch.int64),
        test_x=xs["test"],
        test_y=torch.tensor(test_labels, dtype=torch.int64),
        class_names=tuple(selected),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _find_split_folders(data_dir: Path, folder: str) -> tuple[Path, Path]:
    bases = (data_dir / folder, data_dir / folder / "images", data_dir, data_dir / "images")
    for base in bases:
        if (base / "train").is_dir() and (base / "val").is_dir():
            return base / "train", base / "val"
    raise DataError(
        str(data_dir / folder),
        "no ImageNet-style train/ and val/ folders found",
        fix=_LAYOUT_HELP.format(folder=folder)
        + ". ImageNet needs an image-net.org account, so it is never downloaded; point "
        "CLF_DATA_DIR / paths.data_dir at the folder that contains "
        f"'{folder}/', or set scenario.source_options.folder",
    )
