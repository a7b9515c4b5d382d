"""Avalanche interop: an Avalanche benchmark built from the local MNIST files, run as our Scenario.

Avalanche is an optional extra (``pip install -e ".[avalanche]"``); without it these tests skip.
MNIST is read from ``CLF_DATA_DIR`` (default ``../shared/data``); missing data is a failure.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from cl_framework.build import build_runner
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Scenario, build_scenario, load_source
from cl_framework.scenarios.avalanche_adapter import scenario_from_avalanche
from tests.conftest import shared_data_dir


@pytest.fixture(autouse=True, scope="module")
def _avalanche_installed() -> None:
    # imported here, not at collection: Avalanche takes seconds to import
    pytest.importorskip("avalanche")


def split_mnist(data_dir: str, n_experiences: int = 5, class_order: list[int] | None = None):
    """An Avalanche class-incremental Split-MNIST over the local IDX files (no download)."""
    from avalanche.benchmarks import nc_benchmark

    mnist = load_source("mnist", data_dir, download=False)
    train = TensorDataset(mnist.train_x, mnist.train_y)
    test = TensorDataset(mnist.test_x, mnist.test_y)
    train.targets, test.targets = mnist.train_y, mnist.test_y  # Avalanche reads .targets
    return nc_benchmark(
        train,
        test,
        n_experiences=n_experiences,
        task_labels=False,
        fixed_class_order=class_order if class_order is not None else list(range(10)),
        shuffle=False,
    )


def split_mnist_in_file_order(data_dir: str):
    """Split-MNIST (5 x 2) through Avalanche's generic builder from per-experience datasets.

    Unlike ``nc_benchmark`` (which groups an experience's rows by class), this keeps the rows in
    file order, as the native Seq-MNIST does, so both runs shuffle identical data identically.
    """
    from avalanche.benchmarks import dataset_benchmark

    mnist = load_source("mnist", data_dir, download=False)

    def experience(x: torch.Tensor, y: torch.Tensor, k: int) -> TensorDataset:
        rows = ((y == 2 * k) | (y == 2 * k + 1)).nonzero().squeeze(1)
        dataset = TensorDataset(x[rows], y[rows])
        dataset.targets = y[rows]
        return dataset

    return dataset_benchmark(
        [experience(mnist.train_x, mnist.train_y, k) for k in range(5)],
        [experience(mnist.test_x, mnist.test_y, k) for k in range(5)],
    )


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "mnist").is_dir():
        pytest.fail(f"real MNIST not found under {path}: set CLF_DATA_DIR", pytrace=False)
    return path


def _row_keys(x: torch.Tensor) -> torch.Tensor:
    """One int64 key per image, sorted: compares two splits as multisets of images."""
    weights = torch.arange(1, x[0].numel() + 1, dtype=torch.int64)
    return ((x.flatten(1).to(torch.int64) * weights).sum(1) * 1000003).sort().values


def test_adapter_reproduces_native_split_mnist(data_dir: Path) -> None:
    native = build_scenario(
        load_source("mnist", data_dir, download=False), name="seq-mnist", n_experiences=5
    )
    adapted = scenario_from_avalanche(split_mnist(str(data_dir)), name="avalanche-split-mnist")
    assert isinstance(adapted, Scenario) and adapted.n_experiences == 5
    assert adapted.class_names == tuple(str(c) for c in range(10))
    assert adapted.input_shape == (1, 28, 28)
    for ours, theirs in zip(native, adapted, strict=True):
        assert theirs.classes == ours.classes and theirs.task_label == ours.index
        for split in ("train", "test"):
            a, b = getattr(ours, split), getattr(theirs, split)
            assert b.x.dtype == torch.uint8 and len(b) == len(a)
            assert torch.equal(torch.bincount(b.y, minlength=10), torch.bincount(a.y, minlength=10))
            assert torch.equal(_row_keys(b.x), _row_keys(a.x))  # the same images


def test_adapter_remaps_the_benchmark_class_order(data_dir: Path) -> None:
    order = [7, 3, 0, 9, 1, 5, 2, 8, 6, 4]
    adapted = scenario_from_avalanche(split_mnist(str(data_dir), class_order=order))
    # label k is the k-th class of the benchmark's experiences (sorted within an experience);
    # class_names give back Avalanche's class ids
    assert adapted.class_names == ("3", "7", "0", "9", "1", "5", "2", "8", "4", "6")
    first = adapted[0]
    assert first.classes == (0, 1) and set(first.test.y.tolist()) == {0, 1}
    mnist = load_source("mnist", data_dir, download=False)
    assert len(first.test) == int(((mnist.test_y == 3) | (mnist.test_y == 7)).sum())


def test_config_path_matches_native_seq_mnist(make_config, tmp_path, data_dir):
    """scenario=avalanche (factory) vs the native Seq-MNIST: same seed and config, short run."""
    common = ("strategy=[er]", "buffer.size=200", "trainer=seq-mnist", "trainer.batch_size=32",
              "trainer.limit_train_batches=60", "optimizer.lr=0.1", f"paths.data_dir={data_dir}",
              "seed=3")  # fmt: skip
    native = build_runner(make_config("scenario=seq-mnist", *common), tmp_path / "native").run()
    cfg = make_config(
        "scenario=avalanche",
        "scenario.source_options.factory=tests.test_avalanche:split_mnist_in_file_order",
        "scenario.source_options.pass_data_dir=true",
        *common,
    )
    runner = build_runner(cfg, tmp_path / "avalanche")
    assert [exp.classes for exp in runner.scenario] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    adapted = runner.run()
    assert adapted.class_il.shape == (5, 5)
    for setting in ("class_il", "task_il"):
        ours, theirs = getattr(native, setting)[-1].mean(), getattr(adapted, setting)[-1].mean()
        assert abs(ours - theirs) < 1.0, (setting, ours, theirs)


def test_full_seq_mnist_protocol_within_one_point(make_config, tmp_path, data_dir):
    """DER paper protocol (1 epoch, batch 10, ER-500): Avalanche vs native within 1 point."""
    common = ("experiment=seq-mnist/er-500", f"paths.data_dir={data_dir}", "seed=1")
    native = build_runner(make_config(*common), tmp_path / "native").run()
    cfg = make_config(
        *common,
        "scenario=avalanche",
        "scenario.source_options.factory=tests.test_avalanche:split_mnist_in_file_order",
        "scenario.source_options.pass_data_dir=true",
    )
    adapted = build_runner(cfg, tmp_path / "avalanche").run()
    for setting in ("class_il", "task_il"):
        ours, theirs = getattr(native, setting)[-1].mean(), getattr(adapted, setting)[-1].mean()
        assert abs(ours - theirs) < 1.0, (setting, ours, theirs)


def test_new_style_benchmark_without_declared_classes(data_dir: Path) -> None:
    """Avalanche's benchmark_from_datasets: classes are read from the experiences' labels."""
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset

    mnist = load_source("mnist", data_dir, download=False)

    def part(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, int]) -> object:
        rows = ((y == classes[0]) | (y == classes[1])).nonzero().squeeze(1)[:300]
        dataset = TensorDataset(x[rows], y[rows])
        dataset.targets = y[rows]
        return as_classification_dataset(dataset)

    pairs = [(8, 9), (0, 1)]
    benchmark = benchmark_from_datasets(
        train=[part(mnist.train_x, mnist.train_y, p) for p in pairs],
        test=[part(mnist.test_x, mnist.test_y, p) for p in pairs],
    )
    scenario = scenario_from_avalanche(benchmark, setting="task-il")
    assert scenario.class_names == ("8", "9", "0", "1") and scenario.setting == "task-il"
    assert [len(e.train) for e in scenario] == [300, 300]
    assert torch.equal(scenario[0].train.x, mnist.train_x[(mnist.train_y >= 8).nonzero()[:300, 0]])


def test_bad_factories_name_the_option(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("'package.module:function'")):
        load_source("avalanche", tmp_path)
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_source("avalanche", tmp_path, factory="no_such_module:make")
    with pytest.raises(ConfigError, match="not an Avalanche benchmark"):
        load_source("avalanche", tmp_path, factory="numpy:zeros", kwargs={"shape": 3})
    benchmark = split_mnist(str(data_dir))
    with pytest.raises(ConfigError, match=re.escape("scenario.n_experiences")):
        build_scenario(
            load_source("avalanche", data_dir, factory="tests.test_avalanche:split_mnist",
                        pass_data_dir=True),
            name="a", n_experiences=2,
        )  # fmt: skip
    assert np.isclose(sum(len(e.dataset) for e in benchmark.train_stream), 60_000)
