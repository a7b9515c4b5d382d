"""Tests of data sources (IDX reading, MNIST, Fashion-MNIST, digits) and scenario splitting.

The MNIST-style tests read the real files from ``CLF_DATA_DIR`` (default ``../shared/data``
relative to the repository root) and check facts published with the datasets.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_framework.errors import ConfigError, DataError
from cl_framework.scenarios import (
    DataSource,
    Scenario,
    available_sources,
    build_scenario,
    load_source,
    register_source,
)
from cl_framework.scenarios.idx import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    read_idx_images,
    read_idx_labels,
)
from cl_framework.scenarios.mnist import IDX_FILE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The folder holding ``mnist/`` and ``fashion-mnist/``; missing data is a failure."""
    env = os.environ.get("CLF_DATA_DIR")
    path = Path(env).expanduser().resolve() if env else (REPO_ROOT / "../shared/data").resolve()
    missing = [d for d in ("mnist", "fashion-mnist") if not (path / d).is_dir()]
    if missing:
        pytest.fail(
            f"real datasets not found: {', '.join(missing)} missing under '{path}'. Set "
            "CLF_DATA_DIR to the folder that holds mnist/ and fashion-mnist/ (IDX .gz files).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def mnist(data_dir: Path) -> DataSource:
    return load_source("mnist", data_dir, download=False)


@pytest.fixture(scope="module")
def fashion(data_dir: Path) -> DataSource:
    return load_source("fashion-mnist", data_dir, download=False)


@pytest.fixture(scope="module")
def digits() -> DataSource:
    return load_source("digits", "unused")


def _indexed_source(n_classes: int = 10, per_class: int = 50, n_test: int = 20) -> DataSource:
    """A tiny source whose every image encodes its own sample index, to track samples exactly.

    Class sizes differ (per_class + c) so that stratification errors would show.
    """
    train_y = torch.cat([torch.full((per_class + c,), c) for c in range(n_classes)])
    train_y = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    test_y = torch.arange(n_classes).repeat_interleave(n_test)

    def encode(n: int) -> torch.Tensor:
        idx = torch.arange(n)
        return torch.stack([idx % 256, idx // 256], 1).to(torch.uint8).reshape(n, 1, 1, 2)

    return DataSource(
        name="indexed",
        train_x=encode(len(train_y)),
        train_y=train_y,
        test_x=encode(len(test_y)),
        test_y=test_y,
        class_names=tuple(f"c{c}" for c in range(n_classes)),
        mean=(0.5,),
        std=(0.25,),
    )


def _decode(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), 2).to(torch.int64)
    return flat[:, 0] + 256 * flat[:, 1]


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


# --------------------------------------------------------------------------- real datasets


def test_registry_lists_builtin_sources() -> None:
    assert {"digits", "mnist", "fashion-mnist"} <= set(available_sources())


def test_mnist_matches_published_facts(mnist: DataSource) -> None:
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (10000, 1, 28, 28)
    assert mnist.train_y.dtype == torch.int64 and mnist.train_y.shape == (60000,)
    assert mnist.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(mnist.test_y).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert mnist.n_classes == 10 and mnist.input_shape == (1, 28, 28)
    assert mnist.class_names == tuple("0123456789")
    assert (mnist.mean, mnist.std) == ((0.1307,), (0.3081,))
    # The published normalisation constants are the statistics of the training images.
    scaled = mnist.train_x.float() / 255
    assert scaled.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert scaled.std().item() == pytest.approx(0.3081, abs=1e-4)


def test_fashion_mnist_matches_published_facts(fashion: DataSource) -> None:
    assert fashion.train_x.shape == (60000, 1, 28, 28)
    assert fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_y).tolist() == [1000] * 10
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))


@pytest.mark.parametrize("layout", ["subfolder", "flat"])
def test_raw_files_read_identically_to_gz(
    layout: str, data_dir: Path, mnist: DataSource, tmp_path: Path
) -> None:
    """Uncompressed files, in ``<dir>/mnist/`` or directly in the given folder, give equal data."""
    target = tmp_path / "mnist" if layout == "subfolder" else tmp_path
    target.mkdir(exist_ok=True)
    for name in IDX_FILE_NAMES:
        raw = gzip.decompress((data_dir / "mnist" / f"{name}.gz").read_bytes())
        (target / name).write_bytes(raw)
    raw_source = load_source("mnist", tmp_path, download=False)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(raw_source, field), getattr(mnist, field)), field


def test_truncated_gz_in_dataset_names_the_file(data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "mnist"
    target.mkdir()
    for name in IDX_FILE_NAMES:
        (target / f"{name}.gz").symlink_to(data_dir / "mnist" / f"{name}.gz")
    broken = target / "t10k-labels-idx1-ubyte.gz"
    blob = broken.read_bytes()
    broken.unlink()
    broken.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated: expected 10000 bytes, got") as info:
        load_source("mnist", tmp_path, download=False)
    assert info.value.path == str(broken)
    assert str(broken) in str(info.value)


def test_idx_reader_rejects_broken_files(tmp_path: Path) -> None:
    labels = np.arange(100) % 10
    good = tmp_path / "labels.gz"
    _write_idx(good, labels, IDX_LABELS_MAGIC)
    assert read_idx_labels(good).tolist() == labels.tolist()
    assert read_idx_labels(good).dtype == torch.int64

    raw = tmp_path / "labels-raw"
    _write_idx(raw, labels, IDX_LABELS_MAGIC)
    short = tmp_path / "short-raw"
    short.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated: expected 100 bytes, got 90"):
        read_idx_labels(short)

    with pytest.raises(DataError, match="wrong IDX magic number 0x00000801") as info:
        read_idx_images(good)  # a label file where images are expected
    assert info.value.path == str(good)

    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip data")
    with pytest.raises(DataError, match="gzip"):
        read_idx_labels(garbage)

    with pytest.raises(DataError, match="cannot be read"):
        read_idx_labels(tmp_path / "absent.gz")


def test_images_have_channel_dimension(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 5).reshape(3, 4, 5) % 256
    path = tmp_path / "images"
    _write_idx(path, images, IDX_IMAGES_MAGIC)
    out = read_idx_images(path)
    assert out.shape == (3, 1, 4, 5) and out.dtype == torch.uint8
    assert out[:, 0].numpy().tolist() == images.tolist()


def _small_mnist_dir(root: Path, *, n_test_labels: int = 10000, bad_label: bool = False) -> Path:
    """Well-formed IDX files with correct headers for checks on content, not on format."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    labels = np.arange(n_test_labels) % 10
    if bad_label:
        labels[5] = 10
    _write_idx(folder / "train-images-idx3-ubyte", np.zeros((60000, 28, 28)), IDX_IMAGES_MAGIC)
    _write_idx(folder / "train-labels-idx1-ubyte", np.arange(60000) % 10, IDX_LABELS_MAGIC)
    _write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10000, 28, 28)), IDX_IMAGES_MAGIC)
    _write_idx(folder / "t10k-labels-idx1-ubyte", labels, IDX_LABELS_MAGIC)
    return folder


def test_content_checks_name_the_file(tmp_path: Path) -> None:
    folder = _small_mnist_dir(tmp_path / "count", n_test_labels=9999)
    with pytest.raises(DataError, match="holds 9999 labels but") as info:
        load_source("mnist", tmp_path / "count", download=False)
    assert info.value.path == str(folder / "t10k-labels-idx1-ubyte")

    folder = _small_mnist_dir(tmp_path / "range", bad_label=True)
    with pytest.raises(DataError, match=re.escape("labels must lie in 0..9")) as info:
        load_source("mnist", tmp_path / "range", download=False)
    assert info.value.path == str(folder / "t10k-labels-idx1-ubyte")


def test_missing_files_without_download_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_source("fashion-mnist", tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert info.value.path == str(tmp_path / "nowhere" / "fashion-mnist")
    for name in IDX_FILE_NAMES:
        assert name in message
    assert "CLF_DATA_DIR" in message and "paths.data_dir" in message
    assert "download=False" in message


def test_download_from_mirror_writes_files_atomically(
    data_dir: Path, mnist: DataSource, tmp_path: Path
) -> None:
    """A local ``file://`` mirror stands in for the official one (no network on test machines)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in IDX_FILE_NAMES:
        (mirror / f"{name}.gz").symlink_to(data_dir / "mnist" / f"{name}.gz")
    store = tmp_path / "store"
    source = load_source("mnist", store, mirrors=[mirror.as_uri() + "/"])
    assert torch.equal(source.test_y, mnist.test_y)
    assert sorted(p.name for p in (store / "mnist").iterdir()) == sorted(
        f"{n}.gz" for n in IDX_FILE_NAMES
    )  # no temporary files left behind


def test_failed_download_gives_one_error_listing_the_files(tmp_path: Path) -> None:
    dead = (tmp_path / "empty-mirror").as_uri() + "/"
    with pytest.raises(DataError, match="downloading them failed") as info:
        load_source("mnist", tmp_path / "store", mirrors=[dead])
    for name in IDX_FILE_NAMES:
        assert name in str(info.value)
    assert not list((tmp_path / "store" / "mnist").iterdir())


def test_load_source_rejects_unknown_names_and_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("scenario.source")) as info:
        load_source("cifar-1000", tmp_path)
    assert "digits" in str(info.value) and "mnist" in str(info.value)
    with pytest.raises(ConfigError, match=re.escape("scenario.source_options.dowload")):
        load_source("mnist", tmp_path, dowload=False)


def test_register_source_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_source("digits")(lambda data_dir: None)  # type: ignore[arg-type, return-value]


def test_digits_source(digits: DataSource) -> None:
    assert digits.train_x.ndim == 4 and digits.train_x.shape[1:] == (1, 8, 8)
    assert len(digits.train_x) + len(digits.test_x) == 1797
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(torch.cat([digits.train_x, digits.test_x])).tolist()) <= allowed
    assert int(digits.train_x.min()) == 0 and int(digits.train_x.max()) == 255
    # Stratified: each class has about a quarter of its samples in the test set.
    train_counts = torch.bincount(digits.train_y, minlength=10)
    test_counts = torch.bincount(digits.test_y, minlength=10)
    fractions = test_counts.float() / (train_counts + test_counts).float()
    assert torch.all((fractions - 0.25).abs() < 0.01)
    scaled = digits.train_x.double() / 255
    assert digits.mean[0] == pytest.approx(scaled.mean().item())
    assert digits.std[0] == pytest.approx(scaled.std().item())

    again = load_source("digits", "unused")
    assert torch.equal(again.test_y, digits.test_y) and torch.equal(again.test_x, digits.test_x)
    smaller = load_source("digits", "unused", test_fraction=0.1)
    assert 170 <= len(smaller.test_y) <= 190
    with pytest.raises(ConfigError, match=re.escape("scenario.test_fraction")):
        load_source("digits", "unused", test_fraction=1.5)


# --------------------------------------------------------------------------- scenarios


def test_seq_mnist_five_experiences_of_two(mnist: DataSource) -> None:
    scenario = build_scenario(mnist, name="seq-mnist", n_experiences=5)
    assert isinstance(scenario, Scenario)
    assert len(scenario) == scenario.n_experiences == 5
    assert scenario.class_order == tuple(range(10))  # natural order, as in the DER paper
    seen = [c for exp in scenario for c in exp.classes]
    assert sorted(seen) == list(range(10)) and len(seen) == 10
    train_counts = torch.bincount(mnist.train_y)
    for k, exp in enumerate(scenario):
        assert exp.index == exp.task_label == k
        assert exp.classes == (2 * k, 2 * k + 1)
        assert set(exp.train.y.unique().tolist()) == set(exp.classes)
        assert set(exp.test.y.unique().tolist()) == set(exp.classes)
        assert exp.val is None
        assert len(exp.train) == int(train_counts[list(exp.classes)].sum())
        # Natural order: data is the source's, in the source's order.
        in_exp = (mnist.train_y >= 2 * k) & (mnist.train_y < 2 * k + 2)
        assert torch.equal(exp.train.x, mnist.train_x[in_exp])
    assert sum(len(e.test) for e in scenario) == 10000
    assert scenario.classes_up_to(1) == (0, 1, 2, 3)
    assert scenario.classes_up_to(-1) == tuple(range(10))
    assert scenario[0] is scenario.experiences[0]
    assert scenario.input_shape == (1, 28, 28) and scenario.mean == (0.1307,)


def test_class_order_seed_is_reproducible_and_remaps_labels(digits: DataSource) -> None:
    a = build_scenario(digits, name="d", classes_per_experience=2, class_order_seed=1)
    b = build_scenario(digits, name="d", classes_per_experience=2, class_order_seed=1)
    c = build_scenario(digits, name="d", classes_per_experience=2, class_order_seed=2)
    assert a.class_order == b.class_order
    assert a.class_order != c.class_order
    assert sorted(a.class_order) == list(range(10))
    assert a.class_names == tuple(digits.class_names[o] for o in a.class_order)
    for exp in a:
        # Experience k holds contiguous remapped labels; each maps back to one original class.
        assert exp.classes == (2 * exp.index, 2 * exp.index + 1)
        for label in exp.classes:
            original = a.class_order[label]
            assert torch.equal(
                exp.train.x[exp.train.y == label], digits.train_x[digits.train_y == original]
            )
            assert torch.equal(
                exp.test.x[exp.test.y == label], digits.test_x[digits.test_y == original]
            )


def test_explicit_class_order_and_uneven_sizes(digits: DataSource) -> None:
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    scenario = build_scenario(
        digits, name="d", classes_per_experience=[4, 3, 3], class_order=order, class_order_seed=5
    )
    assert scenario.class_order == tuple(order)  # explicit order wins over the seed
    assert [exp.classes for exp in scenario] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    first = scenario[0]
    assert torch.equal(first.test.x[first.test.y == 0], digits.test_x[digits.test_y == 9])


def test_validation_split_is_disjoint_stratified_and_seeded() -> None:
    source = _indexed_source()
    scenario = build_scenario(source, name="idx", n_experiences=5, val_fraction=0.2, val_seed=3)
    all_ids = []
    for exp in scenario:
        assert exp.val is not None
        train_ids, val_ids = _decode(exp.train.x), _decode(exp.val.x)
        assert not set(train_ids.tolist()) & set(val_ids.tolist())
        # Together they are exactly the experience's training data, labels included.
        in_exp = (source.train_y >= exp.classes[0]) & (source.train_y <= exp.classes[-1])
        union = torch.cat([train_ids, val_ids]).sort().values
        assert torch.equal(union, in_exp.nonzero().squeeze(1))
        assert torch.equal(exp.val.y, source.train_y[val_ids])
        for c in exp.classes:
            n_c = int((source.train_y == c).sum())
            assert int((exp.val.y == c).sum()) == round(0.2 * n_c)
            assert int((exp.train.y == c).sum()) == n_c - round(0.2 * n_c)
        all_ids.append(val_ids)

    def val_ids(**kwargs: int) -> list[torch.Tensor]:
        built = build_scenario(source, name="idx", n_experiences=5, val_fraction=0.2, **kwargs)
        return [_decode(exp.val.x) for exp in built if exp.val is not None]

    assert all(torch.equal(a, b) for a, b in zip(all_ids, val_ids(val_seed=3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(all_ids, val_ids(val_seed=4), strict=True))
    # The validation samples do not depend on the class order.
    shuffled = torch.cat(val_ids(val_seed=3, class_order_seed=7))
    assert torch.equal(shuffled.sort().values, torch.cat(all_ids).sort().values)


def test_task_il_setting(digits: DataSource) -> None:
    scenario = build_scenario(digits, name="d", setting="task-il", n_experiences=5)
    assert scenario.setting == "task-il"
    assert [exp.task_label for exp in scenario] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "key", "text"),
    [
        (
            {"classes_per_experience": 3},
            "scenario.classes_per_experience",
            "10 classes cannot be split into experiences of 3",
        ),
        ({"classes_per_experience": [3, 3]}, "scenario.classes_per_experience", "sum to 6"),
        ({"n_experiences": 11}, "scenario.n_experiences", "11 experiences"),
        ({"n_experiences": 3}, "scenario.n_experiences", "cannot be split"),
        ({}, "scenario.n_experiences", "neither"),
        ({"n_experiences": 4, "classes_per_experience": 2}, "scenario.n_experiences", "disagree"),
        ({"n_experiences": 5, "setting": "domain-il"}, "scenario.setting", "domain-il"),
        (
            {"n_experiences": 5, "class_order": [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]},
            "scenario.class_order",
            "permutation",
        ),
        ({"n_experiences": 5, "val_fraction": 1.0}, "scenario.val_fraction", "[0, 1)"),
    ],
)
def test_bad_split_specs_raise_config_errors(
    digits: DataSource, kwargs: dict, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_scenario(digits, name="d", **kwargs)
    assert info.value.key == key
    assert key in str(info.value) and text in str(info.value)


def test_both_spec_forms_agree(digits: DataSource) -> None:
    both = build_scenario(digits, name="d", n_experiences=5, classes_per_experience=2)
    assert [e.classes for e in both] == [
        e.classes for e in build_scenario(digits, name="d", n_experiences=5)
    ]


def test_train_folds_are_disjoint_stratified_and_cover_the_training_set(real_data_dir):
    """``resized`` with ``train_fold``: the auxiliary experiment's benchmark and auxiliary
    halves of MNIST share no image, split every class evenly, and keep the whole test set."""
    from cl_framework.scenarios.resized import per_class_fold

    whole = load_source("mnist", real_data_dir, download=False)
    folds = [per_class_fold(whole.train_y, k, 2, seed=7) for k in (0, 1)]
    assert not set(folds[0].tolist()) & set(folds[1].tolist())
    assert sorted(folds[0].tolist() + folds[1].tolist()) == list(range(len(whole.train_y)))
    counts = torch.bincount(whole.train_y, minlength=10)
    for k in (0, 1):
        half = load_source("resized", real_data_dir, base="mnist", train_fold=[k, 2])
        assert torch.equal(half.train_x, whole.train_x[folds[k]])
        assert torch.equal(half.test_y, whole.test_y)
        per_class = torch.bincount(half.train_y, minlength=10)
        assert bool(((per_class - counts / 2).abs() <= 0.5).all())
    with pytest.raises(ConfigError, match=r"scenario\.source_options\.train_fold"):
        load_source("resized", real_data_dir, base="mnist", train_fold=[2, 2])
