"""Avalanche interop: an Avalanche benchmark (train / test streams of ``(x, y, t)``) as a Scenario.

An Avalanche user brings a benchmark unchanged, from Python::

    from cl_framework.scenarios.avalanche_adapter import scenario_from_avalanche
    scenario = scenario_from_avalanche(benchmark, name="my-benchmark")

or from a config (``scenario=avalanche``) through a factory that builds it::

    scenario.source=avalanche
    scenario.source_options.factory=my_package.benchmarks:make_split_cifar
    scenario.source_options.kwargs={n_experiences: 5}

Each experience's dataset is read once, in its *eval* transform group (no train-time
augmentation: our batched transforms augment on the device), into uint8 tensors. Images must come
out of the dataset as uint8 tensors, as PIL images, or as float tensors in [0, 1] that are exact
multiples of 1/255 (``ToTensor`` output); a normalising transform cannot be undone and is
refused. Labels are remapped so that the classes of train experience k form a contiguous block,
in the benchmark's order (sorted inside an experience); ``Scenario.class_names[label]`` is
Avalanche's class id, as a string.

Task labels: our engine indexes the task-IL heads by experience, so experience k gets task label k
whatever label Avalanche gave it (Avalanche's class-incremental benchmarks use 0 everywhere).
Experiences must hold disjoint classes (class- or task-incremental benchmarks); the test stream
must have one experience per train experience, with the same classes.

Avalanche is an optional dependency (``pip install -e ".[avalanche]"``), imported only when a
benchmark is converted or built. Note that Avalanche re-seeds the global torch RNG when a
benchmark is created with a ``seed``; the runner seeds everything again afterwards.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.images import channel_stats
from cl_framework.scenarios.scenario import Scenario, build_scenario
from cl_framework.scenarios.sources import DataSource, register_source

_BATCH = 2048


def scenario_from_avalanche(
    benchmark: Any,
    *,
    name: str = "avalanche",
    setting: str = "class-il",
    val_fraction: float = 0.0,
    val_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Scenario:
    """Our Scenario with the experiences of ``benchmark`` (class-il or task-il).

    ``mean`` / ``std`` default to the per-channel statistics of the training images.
    """
    source = source_from_avalanche(benchmark, name=name, mean=mean, std=std)
    return build_scenario(
        source,
        name=name,
        setting=setting,
        val_fraction=val_fraction,
        val_seed=val_seed,
    )


def source_from_avalanche(
    benchmark: Any,
    *,
    name: str = "avalanche",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSource:
    """A DataSource whose labels follow the benchmark's experiences (``experience_sizes`` set)."""
    train_stream = list(benchmark.train_stream)
    test_stream = list(benchmark.test_stream)
    if not train_stream:
        raise ConfigError("scenario.source_options.factory", "the benchmark has no experiences")
    if len(test_stream) != len(train_stream):
        raise ConfigError(
            "scenario.source_options.factory",
            f"the benchmark has {len(train_stream)} train but {len(test_stream)} test "
            "experiences; one test experience per train experience is needed",
        )
    train = [_dataset_tensors(exp.dataset) for exp in train_stream]
    test = [_dataset_tensors(exp.dataset) for exp in test_stream]
    class_order: list[int] = []
    sizes: list[int] = []
    for k in range(len(train_stream)):
        classes = _experience_classes(train_stream[k], train[k][1])
        overlap = set(classes) & set(class_order)
        if overlap:
            raise ConfigError(
                "scenario.source_options.factory",
                f"train experience {k} repeats classes {sorted(overlap)} of earlier experiences; "
                "only benchmarks with disjoint classes per experience (class- / task-incremental) "
                "can be converted",
            )
        class_order += classes
        sizes.append(len(classes))
        test_classes = _experience_classes(test_stream[k], test[k][1])
        if test_classes != classes:
            raise ConfigError(
                "scenario.source_options.factory",
                f"test experience {k} holds classes {test_classes}, train experience {k} "
                f"holds {classes}",
            )
    to_label = torch.full((max(class_order) + 1,), -1, dtype=torch.int64)
    to_label[torch.tensor(class_order)] = torch.arange(len(class_order))
    train_x = torch.cat([x for x, _ in train])
    train_y = to_label[torch.cat([y for _, y in train])]
    test_x = torch.cat([x for x, _ in test])
    test_y = to_label[torch.cat([y for _, y in test])]
    if mean is None or std is None:
        mean, std = channel_stats(train_x)
    return DataSource(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=tuple(str(c) for c in class_order),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        experience_sizes=tuple(sizes),
    )


@register_source("avalanche")
def load_avalanche(
    data_dir: Path,
    *,
    factory: str | None = None,
    kwargs: dict[str, Any] | None = None,
    pass_data_dir: bool = False,
) -> DataSource:
    """The benchmark returned by ``factory`` ("package.module:function"), called with ``kwargs``.

    With ``pass_data_dir`` the factory also gets ``data_dir=<paths.data_dir>``. Use the
    benchmark's own split (``scenario.n_experiences: null``) or restate it.
    """
    if not factory or ":" not in factory:
        raise ConfigError(
            "scenario.source_options.factory",
            f"must name a function as 'package.module:function', got {factory!r}",
            fix="e.g. scenario.source_options.factory=my_benchmarks:split_mnist",
        )
    make = _import_factory(factory)
    call_kwargs = dict(kwargs or {})
    if pass_data_dir:
        call_kwargs["data_dir"] = str(data_dir)
    benchmark = make(**call_kwargs)
    if not hasattr(benchmark, "train_stream") or not hasattr(benchmark, "test_stream"):
        raise ConfigError(
            "scenario.source_options.factory",
            f"'{factory}' returned {type(benchmark).__name__}, not an Avalanche benchmark "
            "with train_stream / test_stream",
        )
    return source_from_avalanche(benchmark, name="avalanche")


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            "scenario.source_options.factory",
            f"cannot import '{module_name}' ({exc})",
            fix="install the module or add its folder to PYTHONPATH; Avalanche itself comes "
            "with pip install -e '.[avalanche]'",
        ) from exc
    make = getattr(module, attr, None)
    if not callable(make):
        raise ConfigError("scenario.source_options.factory", f"'{spec}' is not a function")
    return make


def _experience_classes(experience: Any, labels: torch.Tensor) -> list[int]:
    """Sorted class ids of an experience: its ``classes_in_this_experience``, else its labels."""
    declared = getattr(experience, "classes_in_this_experience", None)
    if declared is None:
        return sorted(int(c) for c in labels.unique().tolist())
    classes = sorted(int(c) for c in declared)
    if not set(labels.unique().tolist()) <= set(classes):
        raise ConfigError(
            "scenario.source_options.factory",
            f"an experience declares classes {classes} but holds other labels",
        )
    return classes


def _dataset_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of an Avalanche dataset, eval transforms, images as uint8 (N, C, H, W)."""
    from torch.utils.data import DataLoader

    if hasattr(dataset, "eval"):
        dataset = dataset.eval()
    loader = DataLoader(dataset, batch_size=_BATCH, shuffle=False, collate_fn=_collate)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ConfigError("scenario.source_options.factory", "an experience holds no samples")
    return torch.cat(xs), torch.cat(ys)


def _collate(items: list[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([_to_uint8(item[0]) for item in items])
    labels = torch.tensor([int(item[1]) for item in items], dtype=torch.int64)
    return images, labels


def _to_uint8(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):  # PIL image or array: HWC (or HW)
        array = np.array(x)
        if array.dtype != np.uint8:
            raise ConfigError(
                "scenario.source_options.factory", f"images of dtype {array.dtype} are not uint8"
            )
        x = torch.from_numpy(array)
        return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
    if x.dtype == torch.uint8:
        return x if x.ndim == 3 else x.unsqueeze(0)
    if x.is_floating_point():
        scaled = x * 255.0
        rounded = scaled.round()
        if float(x.min()) < 0.0 or float(x.max()) > 1.0 or (scaled - rounded).abs().max() > 1e-3:
            raise ConfigError(
                "scenario.source_options.factory",
                "the benchmark's eval transform yields float images that are not ToTensor "
                "output in [0, 1] (normalised?); they cannot be turned back into uint8",
                fix="build the benchmark without Normalize (use eval_transform=ToTensor() or "
                "none) and set scenario.normalize=true instead",
            )
        x = rounded.to(torch.uint8)
        return x if x.ndim == 3 else x.unsqueeze(0)
    raise ConfigError("scenario.source_options.factory", f"unsupported image dtype {x.dtype}")
