"""Data-source registry: a name -> loader mapping, in the style of timm's model registry.

A source is a whole labelled dataset (train and test) held as uint8 tensors in memory (or, for
folder sources with ``scenario.storage=disk``, as :class:`~cl_framework.scenarios.disk.ImageFiles`
decoded batch by batch); splitting it into experiences is
:mod:`cl_framework.scenarios.scenario`'s job. New datasets plug in with
``@register_source("name")`` on a loader ``(data_dir, **options) -> DataSource``.

Every source also accepts two generic options, ``classes`` and ``exclude_classes`` (indices, class
names or a ``"start:stop"`` range of the source's classes): the source is restricted to those
classes, relabelled 0..k-1 in the order given. Loaders that can skip unwanted classes before
reading them (image folders) take these options themselves; for all others the selection is
applied after loading, with the same semantics (:func:`select_classes`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cl_framework.errors import ConfigError

if TYPE_CHECKING:
    from cl_framework.scenarios.disk import ImageFiles, Storage
    from cl_framework.scenarios.domains import DomainShift

CLASS_SELECTION_OPTIONS = ("classes", "exclude_classes")


@dataclass(frozen=True, eq=False)
class DataSource:
    """A labelled image dataset with a fixed train/test split, images as uint8 (N, C, H, W).

    The images are tensors, or :class:`~cl_framework.scenarios.disk.ImageFiles` (same shape and
    dtype, decoded on demand) when a folder source streams from disk.

    ``domain_shift`` is set by domain-IL sources (``perm-mnist``, ``rot-mnist``): the images are
    the base domain and the shift produces domain k's images (see ``setting: domain-il``).
    ``experience_sizes`` is set by sources that come with their own split into experiences
    (an Avalanche benchmark): classes 0..n-1 are already in experience order, and experience k
    holds the next ``experience_sizes[k]`` classes.
    ``ordered`` is set by stream sources (``mnist-360``): the training rows are a stream in a
    fixed order, which the training loader keeps instead of shuffling.
    """

    name: str
    train_x: torch.Tensor | ImageFiles = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor | ImageFiles = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    domain_shift: DomainShift | None = field(default=None, repr=False)
    experience_sizes: tuple[int, ...] | None = None
    ordered: bool = False

    def __post_init__(self) -> None:
        # Checked once here so every scenario can rely on these invariants.
        for split in ("train", "test"):
            x: torch.Tensor | ImageFiles = getattr(self, f"{split}_x")
            y: torch.Tensor = getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(
                    f"source '{self.name}': {split}_x must be uint8 (N, C, H, W), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
                raise ValueError(
                    f"source '{self.name}': {split}_y must be int64 (N,) with N={len(x)}, "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(
                    f"source '{self.name}': {split}_y values must lie in "
                    f"0..{len(self.class_names) - 1}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"source '{self.name}': train and test images differ in shape")
        channels = self.train_x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"source '{self.name}': mean/std need one value per channel")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"source '{self.name}': class names must be unique")
        if self.experience_sizes is not None and sum(self.experience_sizes) != self.n_classes:
            raise ValueError(f"source '{self.name}': experience_sizes must sum to n_classes")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))


SourceLoader = Callable[..., DataSource]

_SOURCES: dict[str, SourceLoader] = {}


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Register a loader under ``name``; a duplicate name is a programming error (ValueError)."""

    def decorator(loader: SourceLoader) -> SourceLoader:
        if name in _SOURCES:
            raise ValueError(f"data source '{name}' is already registered")
        _SOURCES[name] = loader
        return loader

    return decorator


def available_sources() -> list[str]:
    """Names of all registered data sources, sorted."""
    return sorted(_SOURCES)


def load_source(
    name: str, data_dir: str | Path, *, storage: Storage | str | None = None, **options: Any
) -> DataSource:
    """Load a registered source; options are passed to its loader (e.g. ``download=False``).

    Unknown names and unknown options raise :class:`ConfigError` so a typo in a config fails
    before any data is read. ``storage`` (``scenario.storage``) reaches the loaders that take a
    ``storage`` argument (the folder sources); asking any other source for ``disk`` is refused.
    """
    if name not in _SOURCES:
        raise ConfigError(
            "scenario.source",
            f"unknown data source '{name}'",
            fix="use one of: " + ", ".join(available_sources()),
        )
    loader = _SOURCES[name]
    accepted = _keyword_options(loader)
    if isinstance(storage, str):
        from cl_framework.scenarios.disk import Storage

        storage = Storage(storage)
    if storage is not None and accepted is not None and "storage" in accepted:
        options["storage"] = storage
    elif storage is not None and storage.mode == "disk":
        from cl_framework.scenarios.disk import DISK_SOURCES

        raise ConfigError(
            "scenario.storage",
            f"data source '{name}' is always held in memory, it cannot stream from disk",
            fix="use scenario.storage=memory (or auto); disk streaming works for the folder "
            "sources: " + ", ".join(DISK_SOURCES),
        )
    selection: dict[str, Any] = {}
    if accepted is not None:
        for option in CLASS_SELECTION_OPTIONS:
            if option in options and option not in accepted:
                selection[option] = options.pop(option)
        for option in options:
            if option not in accepted:
                valid = sorted((accepted - {"storage"}) | set(CLASS_SELECTION_OPTIONS))
                raise ConfigError(
                    f"scenario.source_options.{option}",
                    f"data source '{name}' has no option '{option}'",
                    fix="use one of: " + ", ".join(valid),
                )
    source = loader(Path(data_dir).expanduser(), **options)
    if selection:
        source = select_classes(source, **selection)
    return source


def resolve_class_selection(
    class_names: Sequence[str],
    classes: Any = None,
    exclude_classes: Any = None,
    *,
    key: str = "scenario.source_options",
) -> list[int]:
    """Indices (into ``class_names``) of the selected classes, in selection order.

    ``classes`` and ``exclude_classes`` each take None, a ``"start:stop"`` range string, or a
    list of indices and/or class names. Without ``classes`` every class is selected, in source
    order; excluded classes are then removed.
    """
    selected = (
        list(range(len(class_names)))
        if classes is None
        else _parse_selection(class_names, classes, f"{key}.classes")
    )
    if len(set(selected)) != len(selected):
        raise ConfigError(f"{key}.classes", "lists a class twice", fix="list each class once")
    if exclude_classes is not None:
        excluded = set(_parse_selection(class_names, exclude_classes, f"{key}.exclude_classes"))
        selected = [c for c in selected if c not in excluded]
    if not selected:
        raise ConfigError(
            f"{key}.classes", "selects no class", fix="select at least one class of the source"
        )
    return selected


def select_classes(
    source: DataSource, classes: Any = None, exclude_classes: Any = None
) -> DataSource:
    """``source`` restricted to some classes, relabelled 0..k-1 in selection order."""
    selected = resolve_class_selection(source.class_names, classes, exclude_classes)
    if selected == list(range(source.n_classes)):
        return source
    table = torch.full((source.n_classes,), -1, dtype=torch.int64)
    table[torch.tensor(selected)] = torch.arange(len(selected))
    splits = {}
    for split in ("train", "test"):
        y = table[getattr(source, f"{split}_y")]
        keep = (y >= 0).nonzero().squeeze(1)
        splits[f"{split}_x"] = getattr(source, f"{split}_x")[keep]
        splits[f"{split}_y"] = y[keep]
    names = tuple(source.class_names[c] for c in selected)
    return replace(source, class_names=names, experience_sizes=None, **splits)


def _parse_selection(class_names: Sequence[str], spec: Any, key: str) -> list[int]:
    n = len(class_names)
    if isinstance(spec, str):
        if ":" not in spec:
            spec = [spec]
        else:
            start, _, stop = spec.partition(":")
            try:
                lo = int(start) if start.strip() else 0
                hi = int(stop) if stop.strip() else n
            except ValueError:
                raise ConfigError(
                    key, f"bad range '{spec}'", fix="write a range as 'start:stop', e.g. '0:100'"
                ) from None
            if not 0 <= lo < hi <= n:
                raise ConfigError(
                    key, f"range '{spec}' is outside 0:{n}", fix=f"use 0 <= start < stop <= {n}"
                )
            return list(range(lo, hi))
    if not isinstance(spec, Sequence):
        raise ConfigError(
            key,
            f"must be a list of class indices / names or a 'start:stop' range, got {spec!r}",
            fix="e.g. [0, 1, 2], ['cat', 'dog'] or '0:100'",
        )
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for item in spec:
        if isinstance(item, bool):
            item = str(item)
        if isinstance(item, int):
            if not 0 <= item < n:
                raise ConfigError(key, f"class index {item} is outside 0..{n - 1}")
            out.append(item)
        elif isinstance(item, str) and item in index:
            out.append(index[item])
        else:
            shown = ", ".join(list(class_names)[:5]) + (", ..." if n > 5 else "")
            raise ConfigError(
                key, f"unknown class {item!r}", fix=f"use indices 0..{n - 1} or names ({shown})"
            )
    return out


def _keyword_options(loader: SourceLoader) -> set[str] | None:
    """Option names a loader accepts after ``data_dir``; None if it takes ``**kwargs``."""
    params = list(inspect.signature(loader).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
