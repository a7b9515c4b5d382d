"""SVHN (Street View House Numbers, cropped digits) from the official ``.mat`` files.

Layout::

    <data_dir>/svhn/train_32x32.mat    73257 images
    <data_dir>/svhn/test_32x32.mat     26032 images
    <data_dir>/svhn/extra_32x32.mat    531131 images (only for train_split "extra" / "train+extra")

Each file holds ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with labels 1..10, where 10 stands
for the digit 0; labels are mapped so that class k is the digit k. The files are downloaded from
http://ufldl.stanford.edu/housenumbers/ and md5-checked when missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cl_framework.errors import ConfigError, DataError
from cl_framework.scenarios.download import DEFAULT_TIMEOUT_S, download_file
from cl_framework.scenarios.sources import DataSource, register_source

SVHN_MIRRORS = ("http://ufldl.stanford.edu/housenumbers/",)
SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
TRAIN_SPLITS = {"train": ("train",), "extra": ("extra",), "train+extra": ("train", "extra")}
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


@register_source("svhn")
def load_svhn(
    data_dir: Path,
    *,
    train_split: str = "train",
    max_train_per_class: int | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """SVHN digits, uint8 (N, 3, 32, 32), class k = digit k.

    ``train_split`` picks the training images: ``train``, ``extra`` or ``train+extra``;
    ``max_train_per_class`` keeps the first n of each class (the auxiliary-knowledge method uses
    the extra split capped at 5000 per class).
    """
    if train_split not in TRAIN_SPLITS:
        raise ConfigError(
            "scenario.source_options.train_split",
            f"unknown split '{train_split}'",
            fix="use one of: " + ", ".join(TRAIN_SPLITS),
        )
    needed = (*TRAIN_SPLITS[train_split], "test")
    files = _ensure_files(Path(data_dir), needed, download, mirrors, timeout_s)
    parts = [_read_mat(files[s]) for s in TRAIN_SPLITS[train_split]]
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    if max_train_per_class is not None:
        if isinstance(max_train_per_class, bool) or max_train_per_class < 1:
            raise ConfigError(
                "scenario.source_options.max_train_per_class",
                f"must be a positive integer or null, got {max_train_per_class!r}",
            )
        keep = _first_per_class(train_y, int(max_train_per_class))
        train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = _read_mat(files["test"])
    return DataSource(
        name="svhn",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=tuple(str(d) for d in range(10)),
        mean=SVHN_MEAN,
        std=SVHN_STD,
    )


def _ensure_files(
    data_dir: Path,
    splits: Sequence[str],
    download: bool,
    mirrors: Sequence[str] | None,
    timeout_s: float,
) -> dict[str, Path]:
    target = data_dir / "svhn"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for split in splits:
        name, _ = SVHN_FILES[split]
        path = next((d / name for d in (target, data_dir) if (d / name).is_file()), None)
        if path is None:
            missing.append(split)
        else:
            found[split] = path
    if not missing:
        return found
    if download:
        try:
            for split in missing:
                name, md5 = SVHN_FILES[split]
                bases = tuple(mirrors) if mirrors is not None else SVHN_MIRRORS
                found[split] = download_file(name, md5, bases, target, timeout_s)
            return found
        except OSError as exc:
            reason = f"downloading them failed ({exc})"
    else:
        reason = "download is disabled (download=False)"
    names = [SVHN_FILES[s][0] for s in missing]
    raise DataError(
        str(target),
        f"SVHN files {', '.join(names)} not found here nor directly in '{data_dir}'; {reason}",
        fix=f"put {', '.join(names)} (from http://ufldl.stanford.edu/housenumbers/, md5 "
        + ", ".join(SVHN_FILES[s][1] for s in missing)
        + f") in '{target}'",
    )


def _read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat  # lazy: scipy is slow to import
    from scipy.io.matlab import MatReadError

    fix = "replace it with the official file (delete it and the loader downloads it again)"
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except (OSError, ValueError, MatReadError) as exc:
        raise DataError(str(path), f"is not a readable .mat file ({exc})", fix=fix) from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        shape = None if x is None else (x.shape, x.dtype)
        raise DataError(str(path), f"'X' must be uint8 (32, 32, 3, N), got {shape}", fix=fix)
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != x.shape[3] or labels.min() < 1 or labels.max() > 10:
        raise DataError(str(path), f"'y' must hold {x.shape[3]} labels in 1..10", fix=fix)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images, torch.from_numpy(labels % 10)


def _first_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first ``n`` rows of every class, in original order (vectorised)."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=10)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(labels)) - start[labels[order]]
    return (rank < n).nonzero().squeeze(1)
