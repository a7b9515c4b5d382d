"""Streaming image folders from disk: splits hold file paths, worker processes decode batches.

``scenario.storage`` chooses where the folder sources (``imagefolder``, ``imagenet_subset``,
``imagenet-r``, ``cub200``, ``tinyimagenet``) keep their images:

- ``memory`` (default): every image is decoded once into uint8 tensors (:mod:`.images`); the
  load refuses when they would exceed the memory budget.
- ``disk``: a :class:`Split` holds :class:`ImageFiles` (file paths + the fixed size to decode to)
  instead of pixels. Each training / evaluation batch is decoded by a ``torch.utils.data``
  ``DataLoader`` with ``trainer.num_workers`` worker processes, with the same decoding step as
  ``memory`` (:func:`.images.decode_file`: full decode, RGB / L, one PIL resize), so a batch has
  the same bytes in both modes.
- ``auto``: ``disk`` when the decoded uint8 train + test images would exceed
  ``scenario.memory_budget_gb`` (default: 80 % of the available memory), else ``memory``.

What stays the same: augmentation and normalisation run batched on the training device
(:class:`.transforms.BatchTransform`), and the replay buffer stores the un-augmented uint8 rows
the loader yields, exactly as in memory mode. Which rows form each batch is
:meth:`.loader.TensorBatchLoader.batch_indices` (the shuffle is a function of the epoch seed);
the workers only decode the rows they are given and draw no random numbers. So the two modes
give the same batches in the same order, for any number of workers, and a resumed run skips the
batches already trained (``skip_batches``) as in memory mode.

:class:`ImageFiles` behaves like a read-only uint8 ``(N, C, H, W)`` tensor where that is cheap:
indexing rows (slices, index tensors, boolean masks) gives ``ImageFiles`` of those rows without
reading anything; ``.to(device)``, ``.clone()``, ``.numpy()``, ``.load()`` and an integer
index decode (in a thread pool); ``torch.cat`` of ``ImageFiles`` concatenates the file lists.
Any other tensor operation needs every pixel in memory and raises a :class:`ConfigError` that
names ``scenario.storage``; strategies that need the whole training tensor declare
``needs_in_memory_data`` and are refused before training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cl_framework.errors import CLFrameworkError, ConfigError
from cl_framework.scenarios.images import (
    check_fits_in_memory,
    decode_file,
    decode_into,
    memory_budget_bytes,
    native_size,
    parse_interpolation,
)
from cl_framework.scenarios.loader import TensorBatchLoader

log = logging.getLogger(__name__)

STORAGE_MODES = ("memory", "disk", "auto")
DISK_SOURCES = ("imagefolder", "imagenet_subset", "imagenet-r", "cub200", "tinyimagenet")
"""Registered sources that can stream from disk (the folder-based ones)."""

_MEMORY_FIX = (
    "use scenario.storage=memory (lower scenario.source_options.size or raise "
    "scenario.memory_budget_gb so that the images fit), or a strategy that reads its data in "
    "batches"
)


def in_memory_error(what: str) -> ConfigError:
    """The error for an operation that needs every pixel of a split streamed from disk."""
    return ConfigError(
        "scenario.storage",
        f"{what} needs the images in memory, but this split streams them from disk",
        fix=_MEMORY_FIX,
    )


# ----------------------------------------------------------------------------- storage policy


@dataclass(frozen=True)
class Storage:
    """``scenario.storage`` and ``scenario.memory_budget_gb``: where folder sources keep images."""

    mode: str = "memory"
    memory_budget_gb: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in STORAGE_MODES:
            raise ConfigError(
                "scenario.storage",
                f"unknown storage '{self.mode}'",
                fix="use one of: " + ", ".join(STORAGE_MODES),
            )
        budget = self.memory_budget_gb
        if budget is not None and (isinstance(budget, bool) or not budget > 0):
            raise ConfigError(
                "scenario.memory_budget_gb",
                f"must be a positive number of GB or null, got {budget!r}",
                fix="e.g. scenario.memory_budget_gb=16, or null for 80% of the available memory",
            )

    def resolve(self, n_images: int, shape: tuple[int, int, int], what: str) -> str:
        """``memory`` or ``disk`` for ``n_images`` of ``shape``; ``memory`` that does not fit
        the budget raises the usual ConfigError (naming the options to change)."""
        if self.mode == "disk":
            return "disk"
        if self.mode == "auto":
            needed = n_images * shape[0] * shape[1] * shape[2]
            budget = memory_budget_bytes(self.memory_budget_gb)
            mode = "disk" if budget is not None and needed > budget else "memory"
            log.info(
                "%s: %d images of %dx%d need %.2f GB as uint8 (budget %s): storage %s",
                what,
                n_images,
                shape[1],
                shape[2],
                needed / 1e9,
                "unknown" if budget is None else f"{budget / 1e9:.2f} GB",
                mode,
            )
            return mode
        check_fits_in_memory(n_images, shape, what, self.memory_budget_gb)
        return "memory"


# ------------------------------------------------------------------------------- image files


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """Image files as a lazy, read-only uint8 ``(N, channels, H, W)`` array (module docstring).

    ``image_size`` is the (H, W) every file is decoded to (``interpolation``: PIL filter); with
    ``check_size`` the files must already have that size (sources read at native size).
    """

    paths: np.ndarray = field(repr=False)
    image_size: tuple[int, int]
    channels: int = 3
    interpolation: str = "bilinear"
    check_size: bool = False

    def __post_init__(self) -> None:
        paths = self.paths
        if not (isinstance(paths, np.ndarray) and paths.dtype == object):
            paths = np.array([str(p) for p in paths], dtype=object)
        if paths.ndim != 1:
            raise ValueError(f"ImageFiles: paths must be one-dimensional, got {paths.shape}")
        if self.channels not in (1, 3):
            raise ValueError(f"ImageFiles: channels must be 1 or 3, got {self.channels}")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        parse_interpolation(self.interpolation)

    # tensor-like metadata ------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), self.channels, *self.image_size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def ndim(self) -> int:
        return 4

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> torch.Size | int:
        """As ``Tensor.size``: the shape, or one of its dimensions."""
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        """Bytes the rows take once decoded (uint8)."""
        return len(self.paths) * self.channels * self.image_size[0] * self.image_size[1]

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFiles({tuple(self.shape)} uint8, {self.interpolation}, on disk)"

    # rows ------------------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> Any:
        """Rows as ``ImageFiles`` (slice, index tensor / array / list, boolean mask) or, for an
        integer, the decoded uint8 (C, H, W) image."""
        if isinstance(index, torch.Tensor):
            if index.ndim == 0 and index.dtype != torch.bool:
                return self._decode_one(int(index))
            index = index.cpu().numpy()
        if isinstance(index, (int, np.integer)):
            return self._decode_one(int(index))
        if isinstance(index, tuple):
            raise in_memory_error("indexing pixels (x[rows, channels, ...])")
        if isinstance(index, list):
            index = np.asarray(index, dtype=np.int64 if not index else None)
        return replace(self, paths=self.paths[index])

    def take(self, index: torch.Tensor | np.ndarray | slice) -> ImageFiles:
        """The rows ``index`` (never decodes)."""
        return self[index]

    def _decode_one(self, i: int) -> torch.Tensor:
        return self.decode_rows([i])[0]

    def decode_rows(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Decode the rows ``index`` one by one (a worker's batch) into uint8 (B, C, H, W)."""
        rows = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        resample = parse_interpolation(self.interpolation)
        out = torch.empty((len(rows), self.channels, *self.image_size), dtype=torch.uint8)
        array = out.numpy()
        for k, i in enumerate(rows.tolist()):
            array[k] = decode_file(
                self.paths[i],
                self.image_size,
                channels=self.channels,
                resample=resample,
                check_size=self.check_size,
            )
        return out

    def load(self, workers: int | None = None) -> torch.Tensor:
        """Every row decoded into one uint8 tensor (thread pool of ``workers`` threads)."""
        return decode_into(
            list(self.paths),
            self.image_size,
            interpolation=self.interpolation,
            channels=self.channels,
            check_size=self.check_size,
            workers=workers,
        )

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Decode, then ``Tensor.to`` (the point where rows of a batch enter memory)."""
        return self.load().to(*args, **kwargs)

    def clone(self) -> torch.Tensor:
        return self.load()

    def numpy(self) -> np.ndarray:
        return self.load().numpy()

    @classmethod
    def concat(cls, parts: Sequence[ImageFiles]) -> ImageFiles:
        """Rows of several ``ImageFiles`` decoded alike, one after the other."""
        first = parts[0]
        for part in parts[1:]:
            if (part.image_size, part.channels, part.interpolation, part.check_size) != (
                first.image_size,
                first.channels,
                first.interpolation,
                first.check_size,
            ):
                raise ValueError("ImageFiles.concat: parts decode to different sizes or modes")
        return replace(first, paths=np.concatenate([p.paths for p in parts]))

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in (torch.cat, torch.concat, torch.concatenate):
            tensors = args[0] if args else kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if dim == 0 and tensors and all(isinstance(t, ImageFiles) for t in tensors):
                return cls.concat(list(tensors))
        name = getattr(func, "__name__", str(func))
        raise in_memory_error(f"torch.{name} on image files")

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes ImageFiles lacks: tensor methods get the storage error.
        if not name.startswith("__") and hasattr(torch.Tensor, name):
            raise in_memory_error(f"Tensor.{name}")
        raise AttributeError(name)


def streams_from_disk(x: Any) -> bool:
    """Whether ``x`` (a split's images) is read from disk batch by batch."""
    return isinstance(x, ImageFiles)


def load_image_splits(
    splits: Mapping[str, Sequence[Path]],
    size: tuple[int, int] | None,
    *,
    interpolation: str = "bilinear",
    channels: int = 3,
    workers: int | None = None,
    what: str = "images",
    storage: Storage | None = None,
) -> dict[str, torch.Tensor | ImageFiles]:
    """The images of each split (e.g. ``{"train": paths, "test": paths}``), decoded into memory
    or kept as :class:`ImageFiles`, as ``storage`` decides for all splits together.

    ``size=None`` keeps the native size, which every image must share (memory mode takes it
    from each split's first image, disk mode from the first image of all).
    """
    storage = storage or Storage()
    parse_interpolation(interpolation)
    n_images = sum(len(p) for p in splits.values())
    first_paths = next((p for p in splits.values() if len(p)), None)
    shape_size = size
    if shape_size is None:
        shape_size = native_size(first_paths or [], what)
    mode = storage.resolve(n_images, (channels, *shape_size), what)
    if mode == "disk":
        return {
            name: ImageFiles(
                np.array([str(p) for p in paths], dtype=object),
                shape_size,
                channels=channels,
                interpolation=interpolation,
                check_size=size is None,
            )
            for name, paths in splits.items()
        }
    out: dict[str, torch.Tensor | ImageFiles] = {}
    for name, paths in splits.items():
        out[name] = decode_into(
            paths,
            size if size is not None else native_size(paths, what),
            interpolation=interpolation,
            channels=channels,
            check_size=size is None,
            workers=workers,
        )
    return out


# ------------------------------------------------------------------------------ batch loading


class _DecodeBatches(Dataset):
    """Map-style dataset whose item b is batch b, decoded (runs in the worker processes).

    A :class:`CLFrameworkError` (an unreadable file) is returned, not raised, so that the main
    process re-raises it with its type and message intact.
    """

    def __init__(self, files: ImageFiles, batches: Sequence[torch.Tensor]) -> None:
        self.files = files
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor | CLFrameworkError:
        try:
            return self.files.decode_rows(self.batches[b])
        except CLFrameworkError as exc:
            return exc


def decode_batches(
    files: ImageFiles,
    batches: Sequence[torch.Tensor],
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """The rows of each index tensor in ``batches`` decoded, in order, by ``num_workers``
    processes (0: in this process)."""
    if not batches:
        return
    loader = DataLoader(
        _DecodeBatches(files, batches),
        batch_size=None,
        shuffle=False,
        num_workers=min(max(0, num_workers), len(batches)),
        pin_memory=pin_memory,
    )
    for item in loader:
        if isinstance(item, BaseException):
            raise item
        yield item


class DiskBatchLoader(TensorBatchLoader):
    """:class:`TensorBatchLoader` over :class:`ImageFiles`: the same batches (rows, order,
    ``skip_batches``, DDP slices, ``steps_per_batch`` chunks), decoded by worker processes."""

    def __init__(
        self,
        x: ImageFiles,
        y: torch.Tensor,
        t: torch.Tensor,
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(x, y, t, batch_size, **kwargs)  # type: ignore[arg-type]
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        indices = list(self.batch_indices())
        decoded = decode_batches(self.x, indices, self.num_workers, self.pin_memory)  # type: ignore[arg-type]
        for idx, x in zip(indices, decoded, strict=True):
            yield self.labels_of(idx) | {"x": x}


def batch_loader(
    x: torch.Tensor | ImageFiles,
    y: torch.Tensor,
    t: torch.Tensor,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    **kwargs: Any,
) -> TensorBatchLoader:
    """The epoch loader for a split: in-memory slicing, or disk decoding by worker processes."""
    if isinstance(x, ImageFiles):
        return DiskBatchLoader(
            x, y, t, batch_size, num_workers=num_workers, pin_memory=pin_memory, **kwargs
        )
    return TensorBatchLoader(x, y, t, batch_size, **kwargs)


EVAL_DECODE_ROWS = 64
"""Rows one worker decodes at a time in evaluation passes (their batches are large: the
workers share each batch, which is then assembled in the training process)."""


def eval_batches(
    x: torch.Tensor | ImageFiles,
    y: torch.Tensor,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``batch_size`` rows in row order (evaluation passes).

    Streamed images are decoded in pieces of at most ``EVAL_DECODE_ROWS`` rows, spread over
    the workers, and joined into batches with the same boundaries as in memory mode.
    """
    n = len(y)
    if not isinstance(x, ImageFiles):
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    piece = min(batch_size, EVAL_DECODE_ROWS)
    pieces = [torch.arange(p, min(p + piece, e)) for s, e in bounds for p in range(s, e, piece)]
    decoded = decode_batches(x, pieces, num_workers)
    for start, stop in bounds:
        parts: list[torch.Tensor] = []
        while sum(len(part) for part in parts) < stop - start:
            parts.append(next(decoded))
        shape = (stop - start, *parts[0].shape[1:])
        out = torch.empty(shape, dtype=torch.uint8, pin_memory=pin_memory)
        yield torch.cat(parts, out=out), y[start:stop]


def resolve_num_workers(num_workers: int | None) -> int:
    """``trainer.num_workers``; None = one per CPU this process may use, at most 8."""
    if num_workers is not None:
        return int(num_workers)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def check_in_memory_strategies(names: Sequence[str], source: str) -> None:
    """Refuse strategies that need whole training tensors when ``source`` streams from disk."""
    if names:
        raise ConfigError(
            "scenario.storage",
            f"strategy {list(names)} needs the whole training data in memory, but "
            f"'{source}' is streamed from disk",
            fix="use scenario.storage=memory (lower scenario.source_options.size or raise "
            "scenario.memory_budget_gb so that the images fit), or drop the strategy",
        )
