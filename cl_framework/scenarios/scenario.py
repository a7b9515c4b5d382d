"""Splitting a data source into a sequence of experiences (class-IL, task-IL, domain-IL).

Labels are remapped once, so that experience k holds a contiguous block of labels and
``class_order[label]`` gives back the original class. Everything downstream (heads, buffer,
task-IL logit masks, metrics) then works on 0..n_classes-1 without knowing the order.
All selection is vectorised (masks, sorts); randomness comes from explicit, private generators.

Domain-IL (``setting="domain-il"``, sources with a ``domain_shift`` such as ``perm-mnist``):
every experience holds all classes, under domain k's input shift, with task label k. The heads
are shared by all experiences, so an experience's task-IL mask covers every head and task-IL
accuracy equals class-IL accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.sources import DataSource

if TYPE_CHECKING:
    from cl_framework.scenarios.disk import ImageFiles

SETTINGS = ("class-il", "task-il", "domain-il")


@dataclass(frozen=True, eq=False)
class Split:
    """Images (uint8), remapped int64 labels and, optionally, per-row task labels and heads.

    ``t`` is None when every row belongs to the experience that owns the split (the usual
    case); splits that mix experiences (joint training) carry one task label per row. ``x`` is
    a tensor, or :class:`~cl_framework.scenarios.disk.ImageFiles` when the source streams from
    disk (``scenario.storage``): rows index lazily, batches are decoded by the loaders.

    ``head`` is None unless the split also holds *foreign* rows: images that are not the
    benchmark's (auxiliary or dream classes) and train a fixed output head. Such a split is
    shuffled as one union, as the reference codes of the auxiliary stream and of WSCL do (their
    single loader over real + auxiliary images). ``head[i] >= 0`` marks a foreign row and its
    head (its ``y`` is ignored); ``-1`` marks the experience's own rows, whose ``y`` is mapped
    to heads by the head manager. Only own rows are offered to the replay buffer.
    """

    x: torch.Tensor | ImageFiles = field(repr=False)
    y: torch.Tensor = field(repr=False)
    t: torch.Tensor | None = field(default=None, repr=False)
    head: torch.Tensor | None = field(default=None, repr=False)
    ordered: bool = False  # a stream in a fixed order (mnist-360): the loader does not shuffle

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split: {len(self.x)} images but {len(self.y)} labels")
        if self.t is not None and len(self.t) != len(self.y):
            raise ValueError(f"Split: {len(self.t)} task labels but {len(self.y)} labels")
        if self.head is not None and len(self.head) != len(self.y):
            raise ValueError(f"Split: {len(self.head)} head entries but {len(self.y)} labels")

    def with_foreign_rows(self, x: torch.Tensor, heads: torch.Tensor) -> Split:
        """This split plus foreign rows ``x`` training ``heads`` (one union to shuffle)."""
        if not isinstance(self.x, torch.Tensor):
            raise TypeError("foreign rows need the split's images in memory (not streamed)")
        if len(x) != len(heads):
            raise ValueError(f"{len(x)} foreign images but {len(heads)} heads")
        if self.t is not None:
            raise ValueError("foreign rows join splits of one experience (per-row t is None)")
        own = self.head if self.head is not None else torch.full((len(self),), -1)
        return Split(
            x=torch.cat([self.x, x.to(self.x.dtype)]),
            y=torch.cat([self.y, torch.full((len(x),), -1, dtype=self.y.dtype)]),
            head=torch.cat([own.long(), heads.long().cpu()]),
        )

    @property
    def n_own(self) -> int:
        """Rows of the experience itself (all rows unless foreign rows were added)."""
        return len(self) if self.head is None else int((self.head < 0).sum())

    def task_labels(self, default: int) -> torch.Tensor:
        """Per-row task labels: ``t`` if present, else ``default`` for every row."""
        if self.t is not None:
            return self.t.long()
        return torch.full((len(self.y),), int(default), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(x={tuple(self.x.shape)} {self.x.dtype}, y={tuple(self.y.shape)})"


@dataclass(frozen=True, eq=False)
class Experience:
    """One step of the stream: its classes, train/val/test data and task label."""

    index: int
    classes: tuple[int, ...]
    train: Split
    val: Split | None
    test: Split
    task_label: int


@dataclass(frozen=True, eq=False)
class Scenario:
    """An ordered sequence of experiences over remapped labels 0..n_classes-1.

    ``input_shape`` is the (C, H, W) the network sees: the stored images' shape, or the crop
    size when the scenario crops (``scenario.random_resized_crop`` / ``scenario.center_crop``).
    """

    name: str
    setting: str
    experiences: tuple[Experience, ...]
    n_classes: int
    class_order: tuple[int, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    @property
    def n_experiences(self) -> int:
        return len(self.experiences)

    def classes_up_to(self, i: int) -> tuple[int, ...]:
        """All labels seen in experiences 0..i (inclusive); negative i counts from the end."""
        n = len(self.experiences)
        if not -n <= i < n:
            raise IndexError(f"experience index {i} out of range for {n} experiences")
        last = i % n
        # dict.fromkeys: in domain-IL every experience repeats the same classes
        return tuple(dict.fromkeys(c for exp in self.experiences[: last + 1] for c in exp.classes))


def build_scenario(
    source: DataSource,
    *,
    name: str,
    setting: str = "class-il",
    n_experiences: int | None = None,
    classes_per_experience: int | list[int] | None = None,
    class_order: list[int] | None = None,
    class_order_seed: int | None = None,
    val_fraction: float = 0.0,
    val_seed: int = 0,
) -> Scenario:
    """Split ``source`` into experiences of disjoint classes.

    Give ``n_experiences`` or ``classes_per_experience`` (or both, if they agree). The class order
    is ``class_order`` if given, else a seeded permutation if ``class_order_seed`` is set, else
    natural order. ``val_fraction`` of each class's training data becomes that experience's
    validation split (stratified, seeded by ``val_seed``, independent of the class order).

    With ``setting="domain-il"`` the source must carry a domain shift; ``n_experiences`` domains
    are built, each with every class (``classes_per_experience`` must be unset).
    """
    if setting not in SETTINGS:
        raise ConfigError(
            "scenario.setting",
            f"unknown setting '{setting}'",
            fix="use one of: " + ", ".join(SETTINGS),
        )
    if setting == "domain-il" or source.domain_shift is not None:
        return _build_domain_il(
            source,
            name=name,
            setting=setting,
            n_experiences=n_experiences,
            classes_per_experience=classes_per_experience,
            class_order=class_order,
            class_order_seed=class_order_seed,
            val_fraction=val_fraction,
            val_seed=val_seed,
        )
    n_classes = source.n_classes
    if source.experience_sizes is not None:
        sizes = _own_split_sizes(source, n_experiences, classes_per_experience, class_order,
                                 class_order_seed)  # fmt: skip
    else:
        sizes = _experience_sizes(n_classes, n_experiences, classes_per_experience)
    order = _class_order(n_classes, class_order, class_order_seed)
    _check_val_fraction(val_fraction)

    # to_label[original class] = remapped label (position in the class order).
    to_label = torch.empty(n_classes, dtype=torch.int64)
    to_label[torch.tensor(order, dtype=torch.int64)] = torch.arange(n_classes)
    train_y = to_label[source.train_y]
    test_y = to_label[source.test_y]
    if val_fraction > 0:
        val_mask = _stratified_mask(source.train_y, n_classes, val_fraction, val_seed)
    else:
        val_mask = None

    experiences = []
    start = 0
    for index, size in enumerate(sizes):
        stop = start + size
        in_train = (train_y >= start) & (train_y < stop)
        in_test = (test_y >= start) & (test_y < stop)
        val = None
        if val_mask is not None:
            val = _take(source.train_x, train_y, in_train & val_mask)
            in_train = in_train & ~val_mask
        experiences.append(
            Experience(
                index=index,
                classes=tuple(range(start, stop)),
                train=replace(_take(source.train_x, train_y, in_train), ordered=source.ordered),
                val=val,
                test=_take(source.test_x, test_y, in_test),
                task_label=index,
            )
        )
        start = stop

    return _assemble(source, name, setting, experiences, n_classes, order)


def _build_domain_il(
    source: DataSource,
    *,
    name: str,
    setting: str,
    n_experiences: int | None,
    classes_per_experience: int | Sequence[int] | None,
    class_order: Sequence[int] | None,
    class_order_seed: int | None,
    val_fraction: float,
    val_seed: int,
) -> Scenario:
    """One experience per domain, each with all classes and the domain index as task label."""
    shift = source.domain_shift
    if shift is None:
        raise ConfigError(
            "scenario.setting",
            f"domain-il needs a source with a domain shift, '{source.name}' has none",
            fix="use scenario=perm-mnist or scenario=rot-mnist, or setting class-il / task-il",
        )
    if setting != "domain-il":
        raise ConfigError(
            "scenario.setting",
            f"source '{source.name}' is a domain-IL source, setting '{setting}' does not apply",
            fix="use scenario.setting=domain-il",
        )
    if classes_per_experience is not None:
        raise ConfigError(
            "scenario.classes_per_experience",
            "does not apply to domain-il: every experience holds every class",
            fix="set scenario.classes_per_experience=null and choose scenario.n_experiences",
        )
    if not _is_int(n_experiences) or n_experiences < 1:  # type: ignore[operator]
        raise ConfigError(
            "scenario.n_experiences",
            f"must be a positive integer (the number of domains), got {n_experiences!r}",
            fix="use e.g. scenario.n_experiences=20",
        )
    n_classes = source.n_classes
    order = _class_order(n_classes, class_order, class_order_seed)
    _check_val_fraction(val_fraction)
    to_label = torch.empty(n_classes, dtype=torch.int64)
    to_label[torch.tensor(order, dtype=torch.int64)] = torch.arange(n_classes)
    train_y = to_label[source.train_y]
    test_y = to_label[source.test_y]
    train_index = torch.arange(len(train_y))
    val_index = None
    if val_fraction > 0:
        val_mask = _stratified_mask(source.train_y, n_classes, val_fraction, val_seed)
        train_index, val_index = (~val_mask).nonzero().squeeze(1), val_mask.nonzero().squeeze(1)
    base_train_x = source.train_x[train_index]
    base_val_x = source.train_x[val_index] if val_index is not None else None

    experiences = []
    for k in range(int(n_experiences)):  # type: ignore[arg-type]
        val = None
        if val_index is not None and base_val_x is not None:
            val = Split(x=shift.apply(base_val_x, k), y=train_y[val_index])
        experiences.append(
            Experience(
                index=k,
                classes=tuple(range(n_classes)),
                train=Split(x=shift.apply(base_train_x, k), y=train_y[train_index]),
                val=val,
                test=Split(x=shift.apply(source.test_x, k), y=test_y),
                task_label=k,
            )
        )
    return _assemble(source, name, setting, experiences, n_classes, order)


def _take(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> Split:
    index = mask.nonzero().squeeze(1)
    return Split(x=x[index], y=y[index])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _experience_sizes(
    n_classes: int,
    n_experiences: int | None,
    classes_per_experience: int | Sequence[int] | None,
) -> list[int]:
    """Number of classes in each experience, after checking the two ways to specify it agree."""
    if n_experiences is None and classes_per_experience is None:
        raise ConfigError(
            "scenario.n_experiences",
            "neither n_experiences nor classes_per_experience is set",
            fix="set one of them, e.g. scenario.n_experiences=5",
        )
    if n_experiences is not None:
        if not _is_int(n_experiences) or n_experiences < 1:
            raise ConfigError(
                "scenario.n_experiences",
                f"must be a positive integer, got {n_experiences!r}",
                fix="use e.g. scenario.n_experiences=5",
            )
        if n_experiences > n_classes:
            raise ConfigError(
                "scenario.n_experiences",
                f"{n_experiences} experiences need at least {n_experiences} classes, "
                f"the source has {n_classes}",
                fix=f"use at most {n_classes} experiences",
            )

    if classes_per_experience is None:
        assert n_experiences is not None
        if n_classes % n_experiences:
            raise ConfigError(
                "scenario.n_experiences",
                f"{n_classes} classes cannot be split into {n_experiences} equal experiences",
                fix=f"use a divisor of {n_classes}, or give scenario.classes_per_experience "
                "as a list of sizes",
            )
        return [n_classes // n_experiences] * n_experiences

    if _is_int(classes_per_experience):
        per = int(classes_per_experience)  # type: ignore[arg-type]
        if per < 1 or n_classes % per:
            raise ConfigError(
                "scenario.classes_per_experience",
                f"{n_classes} classes cannot be split into experiences of {per}",
                fix=f"use a divisor of {n_classes}, or a list of sizes that sums to {n_classes}",
            )
        sizes = [per] * (n_classes // per)
    elif isinstance(classes_per_experience, Sequence) and not isinstance(
        classes_per_experience, str
    ):
        sizes = list(classes_per_experience)
        if not sizes or not all(_is_int(s) and s >= 1 for s in sizes):
            raise ConfigError(
                "scenario.classes_per_experience",
                f"must be a list of positive integers, got {sizes!r}",
                fix=f"use e.g. [{n_classes // 2}, {n_classes - n_classes // 2}]",
            )
        if sum(sizes) != n_classes:
            raise ConfigError(
                "scenario.classes_per_experience",
                f"sizes {sizes} sum to {sum(sizes)}, the source has {n_classes} classes",
                fix=f"make the sizes sum to {n_classes}",
            )
    else:
        raise ConfigError(
            "scenario.classes_per_experience",
            f"must be an integer or a list of integers, got {classes_per_experience!r}",
            fix="use e.g. scenario.classes_per_experience=2",
        )

    if n_experiences is not None and n_experiences != len(sizes):
        raise ConfigError(
            "scenario.n_experiences",
            f"{n_experiences} experiences disagree with classes_per_experience="
            f"{classes_per_experience!r}, which gives {len(sizes)}",
            fix="set only one of scenario.n_experiences and scenario.classes_per_experience",
        )
    return sizes


def _own_split_sizes(
    source: DataSource,
    n_experiences: int | None,
    classes_per_experience: int | Sequence[int] | None,
    class_order: Sequence[int] | None,
    class_order_seed: int | None,
) -> list[int]:
    """The split of a source that brings its own (Avalanche); a restated split must agree."""
    own = list(source.experience_sizes or ())
    if class_order is not None or class_order_seed is not None:
        raise ConfigError(
            "scenario.class_order",
            f"source '{source.name}' comes with its own experiences and class order",
            fix="set scenario.class_order=null and scenario.class_order_seed=null",
        )
    if n_experiences is None and classes_per_experience is None:
        return own
    sizes = _experience_sizes(source.n_classes, n_experiences, classes_per_experience)
    if sizes != own:
        raise ConfigError(
            "scenario.n_experiences",
            f"source '{source.name}' has experiences of {own} classes, the config asks for {sizes}",
            fix="set scenario.n_experiences=null and scenario.classes_per_experience=null to "
            "use the source's own split",
        )
    return own


def _class_order(n_classes: int, class_order: Sequence[int] | None, seed: int | None) -> list[int]:
    """Explicit order, else a seeded permutation, else natural order."""
    if class_order is not None:
        order = list(class_order)
        if not all(_is_int(c) for c in order) or sorted(order) != list(range(n_classes)):
            raise ConfigError(
                "scenario.class_order",
                f"must be a permutation of 0..{n_classes - 1}, got {order!r}",
                fix=f"list every class id 0..{n_classes - 1} exactly once",
            )
        return order
    if seed is not None:
        if not _is_int(seed):
            raise ConfigError(
                "scenario.class_order_seed",
                f"must be an integer or null, got {seed!r}",
                fix="use e.g. scenario.class_order_seed=1",
            )
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(n_classes, generator=generator).tolist()
    return list(range(n_classes))


def _check_val_fraction(val_fraction: float) -> None:
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not (0.0 <= val_fraction < 1.0)
    ):
        raise ConfigError(
            "scenario.val_fraction",
            f"must lie in [0, 1), got {val_fraction!r}",
            fix="use e.g. scenario.val_fraction=0.1, or 0 for no validation split",
        )


def _stratified_mask(
    labels: torch.Tensor, n_classes: int, fraction: float, seed: int
) -> torch.Tensor:
    """Mark round(fraction * n_c) random samples of every class c (at least one stays unmarked).

    Samples are shuffled, stably grouped by class, and the first k of each group are marked: the
    rank of a sample inside its class group is its sorted position minus the group's start.
    """
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    grouped = shuffled[torch.argsort(labels[shuffled], stable=True)]
    counts = torch.bincount(labels, minlength=n_classes)
    group_start = torch.cumsum(counts, 0) - counts
    n_marked = torch.minimum(torch.round(counts * fraction).to(torch.int64), (counts - 1).clamp(0))
    rank = torch.arange(len(labels)) - group_start[labels[grouped]]
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[grouped] = rank < n_marked[labels[grouped]]
    return mask


def _assemble(
    source: DataSource,
    name: str,
    setting: str,
    experiences: list[Experience],
    n_classes: int,
    order: Sequence[int],
) -> Scenario:
    """The Scenario of built experiences; class names follow the class order."""
    return Scenario(
        name=name,
        setting=setting,
        experiences=tuple(experiences),
        n_classes=n_classes,
        class_order=tuple(order),
        class_names=tuple(source.class_names[c] for c in order),
        input_shape=source.input_shape,
        mean=source.mean,
        std=source.std,
    )
