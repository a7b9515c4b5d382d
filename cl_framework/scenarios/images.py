"""Decoding image files into one uint8 (N, C, H, W) tensor, resized at load time with PIL.

Folder-based sources (Tiny-ImageNet, ImageNet subsets, ImageNet-R, CUB-200, any ImageFolder)
decode every image once, in a thread pool (PIL releases the GIL while decoding and resizing),
straight into a preallocated tensor: full decode, RGB (or L) conversion, then one PIL resize to
the configured (H, W), as the reference code bases do. Before decoding, the size of the result is
checked against the memory budget (by default 80 % of the available memory), so a too-large
resolution fails at once with the number to change. :func:`decode_file` is the one decoding
step; disk streaming (:mod:`cl_framework.scenarios.disk`) calls it too, so both storage modes
give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cl_framework.errors import ConfigError, DataError

if TYPE_CHECKING:
    from cl_framework.scenarios.disk import ImageFiles

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

MEMORY_FRACTION = 0.8
"""Refuse to hold images that would take more than this fraction of the available memory."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_size(size: Any, key: str = "scenario.source_options.size") -> tuple[int, int] | None:
    """``None`` (keep the native size), an int (square) or ``[height, width]``."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if (
        isinstance(size, Sequence)
        and not isinstance(size, str)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return (int(size[0]), int(size[1]))
    raise ConfigError(
        key,
        f"must be a positive integer or [height, width], got {size!r}",
        fix="use e.g. size=64 or size=[288, 384]",
    )


def parse_interpolation(
    name: str, key: str = "scenario.source_options.interpolation"
) -> Image.Resampling:
    if name not in INTERPOLATIONS:
        raise ConfigError(
            key, f"unknown interpolation '{name}'", fix="use one of: " + ", ".join(INTERPOLATIONS)
        )
    return INTERPOLATIONS[name]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by extension, case-insensitive), sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def memory_budget_bytes(budget_gb: float | None = None) -> float | None:
    """Bytes of decoded images that may be held in memory: ``budget_gb`` if given, else
    ``MEMORY_FRACTION`` of the available memory (None where that cannot be read)."""
    if budget_gb is not None:
        return float(budget_gb) * 1e9
    available = available_memory_bytes()
    return None if available is None else MEMORY_FRACTION * available


def check_fits_in_memory(
    n_images: int, shape: tuple[int, int, int], what: str, budget_gb: float | None = None
) -> None:
    """Raise ConfigError if ``n_images`` uint8 images of ``shape`` exceed the memory budget."""
    needed = n_images * shape[0] * shape[1] * shape[2]
    budget = memory_budget_bytes(budget_gb)
    if budget is not None and needed > budget:
        limit = (
            f"the memory budget is {budget / 1e9:.1f} GB (scenario.memory_budget_gb)"
            if budget_gb is not None
            else f"only {budget / MEMORY_FRACTION / 1e9:.1f} GB of memory is available"
        )
        raise ConfigError(
            "scenario.source_options.size",
            f"{what}: {n_images} images of {shape[1]}x{shape[2]} need {needed / 1e9:.1f} GB as "
            f"uint8, {limit}",
            fix="stream the images from disk (scenario.storage=disk or auto, folder sources), "
            "lower scenario.source_options.size, or cap the images per class "
            "(scenario.source_options.max_train_per_class where the source has it)",
        )


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def decode_images(
    paths: Sequence[Path],
    size: tuple[int, int] | None,
    *,
    interpolation: str = "bilinear",
    channels: int = 3,
    workers: int | None = None,
    what: str = "images",
    budget_gb: float | None = None,
) -> torch.Tensor:
    """Decode ``paths`` into uint8 (N, channels, H, W), resized to ``size`` = (H, W).

    With ``size=None`` every image must already share one size (that of the first image).
    Grayscale / palette / RGBA files are converted to ``channels`` (3: RGB, 1: L).
    """
    parse_interpolation(interpolation)  # a bad name fails before anything is read
    fixed_native = size is None
    if size is None:
        size = native_size(paths, what)
    check_fits_in_memory(len(paths), (channels, size[0], size[1]), what, budget_gb)
    return decode_into(
        paths,
        size,
        interpolation=interpolation,
        channels=channels,
        check_size=fixed_native,
        workers=workers,
    )


def native_size(paths: Sequence[Path], what: str) -> tuple[int, int]:
    """(H, W) of the first image (the size every image must have when none is configured)."""
    if not paths:
        raise DataError(what, "no images found", fix="check the dataset layout")
    with _open(paths[0]) as first:
        return (first.height, first.width)


def decode_file(
    path: Path | str,
    size: tuple[int, int],
    *,
    channels: int = 3,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    check_size: bool = False,
) -> np.ndarray:
    """One image file as uint8 (channels, H, W): full decode, RGB / L conversion, one PIL resize
    to ``size`` (skipped when it already has that size). ``check_size``: the file must already
    be ``size`` (sources read at their native size)."""
    h, w = size
    with _open(Path(path)) as img:
        if check_size and (img.height, img.width) != (h, w):
            raise DataError(
                str(path),
                f"is {img.height}x{img.width}, other images are {h}x{w}",
                fix="give a resolution to resize to (scenario.source_options.size)",
            )
        converted = img.convert({3: "RGB", 1: "L"}[channels])
        if converted.size != (w, h):
            converted = converted.resize((w, h), resample)
        pixels = np.asarray(converted)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_into(
    paths: Sequence[Path | str],
    size: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    channels: int = 3,
    check_size: bool = False,
    workers: int | None = None,
) -> torch.Tensor:
    """Decode ``paths`` (no memory check) into a new uint8 (N, channels, H, W) tensor, in a
    thread pool of ``workers`` threads (None: up to 16) when there are 64 images or more."""
    resample = parse_interpolation(interpolation)
    h, w = size
    out = torch.empty((len(paths), channels, h, w), dtype=torch.uint8)
    array = out.numpy()

    def load(i: int) -> None:
        array[i] = decode_file(
            paths[i], size, channels=channels, resample=resample, check_size=check_size
        )

    n_workers = workers if workers is not None else min(16, os.cpu_count() or 1)
    if n_workers <= 1 or len(paths) < 64:
        for i in range(len(paths)):
            load(i)
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            # list() re-raises the first worker exception here
            list(pool.map(load, range(len(paths))))
    return out


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            str(path),
            f"cannot be read as an image ({exc})",
            fix="replace it with the original file from the dataset archive, or delete it",
        ) from exc


def channel_stats(
    x: torch.Tensor | ImageFiles, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (chunked, float64)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        # x may be image files on disk (scenario.storage=disk): rows are decoded chunk by chunk
        part = x[start : start + chunk].to(dtype=torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.pow(2).sum(dim=(0, 2, 3))
    count = max(len(x) * x.shape[2] * x.shape[3], 1)
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int, key: str) -> np.ndarray:
    """Boolean test mask: round(test_fraction * n_c) random samples of every class c."""
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(
            key, f"must lie strictly between 0 and 1, got {test_fraction!r}", fix="e.g. 0.2"
        )
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        n_test = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
        mask[rng.choice(members, size=n_test, replace=False)] = True
    return mask


def scan_class_folders(
    root: Path, folder_names: Sequence[str], what: str, fix: str
) -> tuple[list[Path], list[int]]:
    """Image files of ``root/<folder_names[k]>/`` labelled k; a missing or empty folder fails.

    All missing folders are reported together (the first few by name) so that a wrong layout
    shows at once.
    """
    missing = [name for name in folder_names if not (root / name).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DataError(
            str(root),
            f"{what}: {len(missing)} of {len(folder_names)} class folders are missing ({shown})",
            fix=fix,
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(folder_names):
        files = list_images(root / name)
        if not files:
            raise DataError(str(root / name), f"{what}: class folder holds no images", fix=fix)
        paths += files
        labels += [label] * len(files)
    return paths, labels


def cap_per_class(
    paths: list[Path], labels: list[int], max_per_class: int | None, key: str
) -> tuple[list[Path], list[int]]:
    """Keep the first ``max_per_class`` files (in sorted order) of every class."""
    if max_per_class is None:
        return paths, labels
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1:
        raise ConfigError(key, f"must be a positive integer or null, got {max_per_class!r}")
    seen: dict[int, int] = {}
    kept_paths, kept_labels = [], []
    for path, label in zip(paths, labels, strict=True):
        if seen.get(label, 0) < max_per_class:
            seen[label] = seen.get(label, 0) + 1
            kept_paths.append(path)
            kept_labels.append(label)
    return kept_paths, kept_labels
