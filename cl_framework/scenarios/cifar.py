"""CIFAR-10 and CIFAR-100 from the official "python version" archives (pickled batches).

Layout (what ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` extract to)::

    <data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <data_dir>/cifar-100-python/{train, test, meta}

Each batch is a pickled dict with ``data`` (N x 3072 uint8: the red, green, then blue 32x32
planes, row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` / ``coarse_labels``
(CIFAR-100). The files are Python-2 pickles; they are read with an unpickler that only accepts
the numpy array types such files contain, so a tampered file cannot run code.

``cifar100-coarse12`` is the auxiliary set of the ICPR 2022 auxiliary-knowledge method and of
WSCL: CIFAR-100's coarse labels without the 8 superclasses that overlap CIFAR-10's animals and
vehicles (12 superclasses left, 2500 training images each).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_framework.errors import ConfigError, DataError
from cl_framework.scenarios.download import (
    DEFAULT_TIMEOUT_S,
    Archive,
    DatasetLayout,
    ensure_dataset,
)
from cl_framework.scenarios.sources import DataSource, register_source, select_classes

_OFFICIAL = ("https://www.cs.toronto.edu/~kriz/",)

CIFAR10_ARCHIVE = Archive("cifar-10-python.tar.gz", _OFFICIAL, "c58f30108f718f92721af3b95e74349a")
CIFAR100_ARCHIVE = Archive("cifar-100-python.tar.gz", _OFFICIAL, "eb9058c3a382ffc7106e4002c42a8d85")

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_LAYOUT = DatasetLayout(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    markers=(*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta"),
    description="data_batch_1 .. data_batch_5, test_batch, batches.meta from "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
)
CIFAR100_LAYOUT = DatasetLayout(
    name="CIFAR-100",
    folder="cifar-100-python",
    markers=("train", "test", "meta"),
    description="train, test, meta from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
)

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

CIFAR10_OVERLAPPING_SUPERCLASSES = (
    "large_carnivores",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "reptiles",
    "small_mammals",
    "vehicles_1",
    "vehicles_2",
)
"""CIFAR-100 superclasses removed from the auxiliary set because they overlap CIFAR-10."""

_SIDE = 32


@dataclass(frozen=True)
class _Counts:
    train: int
    test: int
    classes: int


_CIFAR10_COUNTS = _Counts(50_000, 10_000, 10)
_CIFAR100_COUNTS = _Counts(50_000, 10_000, 100)


@register_source("cifar10")
def load_cifar10(
    data_dir: Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """CIFAR-10: 50000 train / 10000 test, uint8 (N, 3, 32, 32), 10 classes."""
    folder = ensure_dataset(
        CIFAR10_LAYOUT,
        CIFAR10_ARCHIVE,
        data_dir,
        download=download,
        mirrors=mirrors,
        timeout_s=timeout_s,
    )
    meta = read_cifar_pickle(folder / "batches.meta")
    names = _string_list(meta, "label_names", folder / "batches.meta")
    train = [_read_batch(folder / f, "labels") for f in CIFAR10_TRAIN_FILES]
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    test_x, test_y = _read_batch(folder / "test_batch", "labels")
    _verify(folder, train_x, train_y, test_x, test_y, names, _CIFAR10_COUNTS)
    return DataSource(
        name="cifar10",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=tuple(names),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


@register_source("cifar100")
def load_cifar100(
    data_dir: Path,
    *,
    labels: str = "fine",
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """CIFAR-100: 50000 train / 10000 test, uint8 (N, 3, 32, 32).

    ``labels="fine"`` gives the 100 classes, ``labels="coarse"`` the 20 superclasses.
    """
    if labels not in ("fine", "coarse"):
        raise ConfigError(
            "scenario.source_options.labels",
            f"must be 'fine' or 'coarse', got {labels!r}",
            fix="use labels=fine (100 classes) or labels=coarse (20 superclasses)",
        )
    folder = ensure_dataset(
        CIFAR100_LAYOUT,
        CIFAR100_ARCHIVE,
        data_dir,
        download=download,
        mirrors=mirrors,
        timeout_s=timeout_s,
    )
    meta = read_cifar_pickle(folder / "meta")
    names = _string_list(meta, f"{labels}_label_names", folder / "meta")
    train_x, train_y = _read_batch(folder / "train", f"{labels}_labels")
    test_x, test_y = _read_batch(folder / "test", f"{labels}_labels")
    counts = _CIFAR100_COUNTS if labels == "fine" else _Counts(50_000, 10_000, 20)
    _verify(folder, train_x, train_y, test_x, test_y, names, counts)
    return DataSource(
        name="cifar100" if labels == "fine" else "cifar100-coarse",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=tuple(names),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    )


@register_source("cifar100-coarse12")
def load_cifar100_coarse12(
    data_dir: Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """CIFAR-100 superclasses minus the 8 that overlap CIFAR-10: 12 classes, 30000 / 6000."""
    coarse = load_cifar100(
        data_dir, labels="coarse", download=download, mirrors=mirrors, timeout_s=timeout_s
    )
    missing = [c for c in CIFAR10_OVERLAPPING_SUPERCLASSES if c not in coarse.class_names]
    if missing:
        raise DataError(
            str(Path(data_dir) / CIFAR100_LAYOUT.folder / "meta"),
            f"coarse_label_names lacks the superclasses {missing}",
            fix="replace the CIFAR-100 files with the official ones",
        )
    subset = select_classes(coarse, exclude_classes=list(CIFAR10_OVERLAPPING_SUPERCLASSES))
    return DataSource(
        name="cifar100-coarse12",
        train_x=subset.train_x,
        train_y=subset.train_y,
        test_x=subset.test_x,
        test_y=subset.test_y,
        class_names=subset.class_names,
        mean=subset.mean,
        std=subset.std,
    )


# --------------------------------------------------------------------------- reading


_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")
        if module.endswith("multiarray"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                from numpy._core import multiarray
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core import multiarray  # type: ignore[no-redef]
            return getattr(multiarray, name)
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch / meta file as a dict with str keys (Python-2 pickles read as latin-1)."""
    fix = "replace it with the file from the official archive (delete the folder to re-extract)"
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), f"cannot be read ({exc.strerror or exc})", fix=fix) from exc
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except Exception as exc:  # pickle raises many types on corrupt data
        raise DataError(str(path), f"is not a CIFAR python batch ({exc})", fix=fix) from exc
    if not isinstance(obj, dict):
        raise DataError(str(path), "is not a CIFAR python batch (no dict inside)", fix=fix)
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_cifar_pickle(path)
    fix = "replace it with the file from the official archive"
    if "data" not in batch or label_key not in batch:
        raise DataError(str(path), f"lacks the keys 'data' and '{label_key}'", fix=fix)
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
        raise DataError(
            str(path), f"'data' must be uint8 N x 3072, got {data.dtype} {data.shape}", fix=fix
        )
    if labels.shape != (data.shape[0],):
        raise DataError(
            str(path), f"holds {data.shape[0]} images but {labels.size} labels", fix=fix
        )
    x = torch.from_numpy(data.reshape(-1, 3, _SIDE, _SIDE).copy())
    return x, torch.from_numpy(labels)


def _string_list(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(
            str(path), f"lacks the list '{key}'", fix="replace it with the official file"
        )
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _verify(
    folder: Path,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    names: list[str],
    expected: _Counts,
) -> None:
    """Counts and label ranges of the official release; a mismatch names the folder."""
    fix = "replace the files with the official archive's (delete the folder to re-extract)"
    problems = []
    if len(names) != expected.classes:
        problems.append(f"{len(names)} class names, expected {expected.classes}")
    if len(train_y) != expected.train:
        problems.append(f"{len(train_y)} training images, expected {expected.train}")
    if len(test_y) != expected.test:
        problems.append(f"{len(test_y)} test images, expected {expected.test}")
    for y in (train_y, test_y):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
            problems.append(f"labels outside 0..{len(names) - 1}")
            break
    if problems:
        raise DataError(str(folder), "; ".join(problems), fix=fix)
