"""MNIST and Fashion-MNIST sources, read from the standard IDX files (raw or ``.gz``).

Files are looked up in ``<data_dir>/<folder>/`` and, because users often point at the folder
itself, directly in ``data_dir``. Missing files are downloaded from the official mirrors when
allowed; whatever happens, the user sees one :class:`DataError` that says which files to put where.
Content is verified after reading (counts, shapes, label range) since archives from other places
may differ in compression but must not differ in content.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cl_framework.errors import DataError
from cl_framework.scenarios.idx import read_idx_images, read_idx_labels
from cl_framework.scenarios.sources import DataSource, register_source

IDX_FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four files of an MNIST-style dataset, without the optional ``.gz`` suffix."""

DEFAULT_TIMEOUT_S = 10.0

_N_TRAIN, _N_TEST, _SIDE, _N_CLASSES = 60_000, 10_000, 28, 10


@dataclass(frozen=True)
class MnistLikeSpec:
    """What distinguishes MNIST from Fashion-MNIST: folder, mirrors, class names, statistics."""

    name: str
    folder: str
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


MNIST = MnistLikeSpec(
    name="mnist",
    folder="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    class_names=tuple(str(d) for d in range(10)),
    mean=(0.1307,),
    std=(0.3081,),
)

FASHION_MNIST = MnistLikeSpec(
    name="fashion-mnist",
    folder="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mean=(0.2860,),
    std=(0.3530,),
)


@register_source("mnist")
def load_mnist(
    data_dir: Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """MNIST digits, 60000 train / 10000 test, uint8 (N, 1, 28, 28)."""
    return load_mnist_like(MNIST, data_dir, download=download, mirrors=mirrors, timeout_s=timeout_s)


@register_source("fashion-mnist")
def load_fashion_mnist(
    data_dir: Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """Fashion-MNIST garments, 60000 train / 10000 test, uint8 (N, 1, 28, 28)."""
    return load_mnist_like(
        FASHION_MNIST, data_dir, download=download, mirrors=mirrors, timeout_s=timeout_s
    )


def load_mnist_like(
    spec: MnistLikeSpec,
    data_dir: str | Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DataSource:
    """Locate (downloading if allowed), read and verify the four IDX files of ``spec``.

    ``mirrors`` overrides the official mirrors (base URLs ending in ``/``; ``file://`` works),
    for sites with a local copy.
    """
    data_dir = Path(data_dir).expanduser()
    files = _ensure_files(
        spec,
        data_dir,
        download=download,
        mirrors=tuple(mirrors) if mirrors is not None else spec.mirrors,
        timeout_s=timeout_s,
    )
    train_x = read_idx_images(files["train-images-idx3-ubyte"])
    train_y = read_idx_labels(files["train-labels-idx1-ubyte"])
    test_x = read_idx_images(files["t10k-images-idx3-ubyte"])
    test_y = read_idx_labels(files["t10k-labels-idx1-ubyte"])
    _verify(
        train_x,
        train_y,
        _N_TRAIN,
        files["train-images-idx3-ubyte"],
        files["train-labels-idx1-ubyte"],
    )
    _verify(
        test_x, test_y, _N_TEST, files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]
    )
    return DataSource(
        name=spec.name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=spec.class_names,
        mean=spec.mean,
        std=spec.std,
    )


def find_idx_files(directory: Path) -> dict[str, Path] | None:
    """Paths of the four files in ``directory`` (raw preferred over ``.gz``); None if any lacks."""
    found = {name: _find_file(directory, name) for name in IDX_FILE_NAMES}
    if any(path is None for path in found.values()):
        return None
    return {name: path for name, path in found.items() if path is not None}


def download_idx_files(
    names: Sequence[str], target: Path, mirrors: Sequence[str], timeout_s: float
) -> None:
    """Download ``<mirror><name>.gz`` for each name into ``target``, trying mirrors in order.

    Each file is written to a temporary file in ``target`` and renamed into place, so an
    interrupted download never leaves a truncated file under the real name. Raises OSError with
    every mirror's failure if a file cannot be fetched.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        failures: list[str] = []
        for mirror in mirrors:
            url = mirror + f"{name}.gz"
            try:
                _fetch_atomically(url, target / f"{name}.gz", timeout_s)
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                failures.append(f"{url}: {exc}")
        else:
            raise OSError("; ".join(failures) or "no mirror configured")


def _fetch_atomically(url: str, dest: Path, timeout_s: float) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            shutil.copyfileobj(response, out)
        with tmp.open("rb") as check:
            if check.read(2) != b"\x1f\x8b":
                # Mirrors sometimes answer 200 with an HTML error page.
                raise OSError("response is not a gzip file")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _ensure_files(
    spec: MnistLikeSpec,
    data_dir: Path,
    *,
    download: bool,
    mirrors: Sequence[str],
    timeout_s: float,
) -> dict[str, Path]:
    target = data_dir / spec.folder
    for directory in (target, data_dir):
        found = find_idx_files(directory)
        if found is not None:
            return found

    if download:
        missing = [n for n in IDX_FILE_NAMES if _find_file(target, n) is None]
        try:
            download_idx_files(missing, target, mirrors, timeout_s)
        except OSError as exc:
            reason = f"downloading them failed ({exc})"
        else:
            found = find_idx_files(target)
            if found is not None:
                return found
            reason = "downloading them did not produce the files"
    else:
        reason = "download is disabled (download=False)"

    raise DataError(
        str(target),
        f"{spec.name} files not found here nor directly in '{data_dir}'; expected "
        + ", ".join(IDX_FILE_NAMES)
        + f" (each raw or .gz); {reason}",
        fix=f"put the four files in '{target}', or point CLF_DATA_DIR / paths.data_dir at the "
        f"folder that contains '{spec.folder}/'",
    )


def _find_file(directory: Path, name: str) -> Path | None:
    """Path of one IDX file in ``directory`` (raw preferred over ``.gz``), or None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _verify(
    images: torch.Tensor,
    labels: torch.Tensor,
    expected_n: int,
    images_path: Path,
    labels_path: Path,
) -> None:
    """Check counts, image size and label range; a mismatch names the offending file."""
    fix = "replace it with the original file (delete it and the loader downloads it again)"
    if images.shape[0] != expected_n:
        raise DataError(
            str(images_path), f"expected {expected_n} images, found {images.shape[0]}", fix=fix
        )
    if tuple(images.shape[2:]) != (_SIDE, _SIDE):
        raise DataError(
            str(images_path),
            f"expected {_SIDE}x{_SIDE} images, found {tuple(images.shape[2:])}",
            fix=fix,
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            str(labels_path),
            f"holds {labels.shape[0]} labels but '{images_path.name}' holds {images.shape[0]} "
            "images",
            fix=fix,
        )
    if int(labels.min()) < 0 or int(labels.max()) >= _N_CLASSES:
        raise DataError(
            str(labels_path),
            f"labels must lie in 0..{_N_CLASSES - 1}, found {int(labels.min())}.."
            f"{int(labels.max())}",
            fix=fix,
        )
