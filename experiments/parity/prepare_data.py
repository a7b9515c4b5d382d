"""Lay the shared IDX files out as torchvision's MNIST / FashionMNIST expect them.

The official codes (Mammoth forks) read ``torchvision.datasets.MNIST(root)`` and friends, which
look for decompressed IDX files in ``<root>/<Class>/raw/``. This writes them there from
``$CLF_DATA_DIR`` (the same bytes our scenarios read), so both sides see identical images.
Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: our folder name -> torchvision class folder
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def torchvision_layout(
    data_dir: Path,
    dest: Path,
    dataset: str,
    root_name: str,
    subclasses: tuple[str, ...] = (),
) -> Path:
    """Write ``dest/<root_name>/<Class>/raw/<idx>`` for ``dataset``; returns ``dest/<root_name>``.

    ``root_name`` is the folder the official code passes as ``root`` (e.g. cl-mah reads
    ``./data/MNIST`` for MNIST and ``./data/fashionMNIST`` for Fashion-MNIST). torchvision
    names the raw folder after the *class* that reads it, so every subclass the official code
    defines (``MyMNIST``, ``JoinedDataset``) gets a folder too: symlinks to the same files.
    """
    src = data_dir / dataset
    raw = dest / root_name / TORCHVISION_FOLDERS[dataset] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in subclasses:
        link = dest / root_name / name
        if not link.exists():
            link.symlink_to(TORCHVISION_FOLDERS[dataset], target_is_directory=True)
    for name in IDX_FILES:
        out = raw / name
        if out.exists():
            continue
        gz = src / f"{name}.gz"
        plain = src / name
        if gz.exists():
            with gzip.open(gz, "rb") as fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        elif plain.exists():
            shutil.copyfile(plain, out)
        else:
            raise FileNotFoundError(
                f"{gz} not found: point CLF_DATA_DIR at the folder holding mnist/ and "
                "fashion-mnist/ (../shared/data here)"
            )
    return dest / root_name
