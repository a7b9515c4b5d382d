"""Benchmark data sources on fixtures written in each published format, plus real domain-IL MNIST.

The fixtures are written by the tests themselves, file by file, in the layout the official
archives extract to: CIFAR python pickle batches (Python-2 style dicts, latin-1 readable),
Tiny-ImageNet folders with ``val/val_annotations.txt``, ImageNet-style ``train/<wnid>`` and
``val/<wnid>`` folders, ImageNet-R class folders, CUB-200-2011's index files, SVHN ``.mat``
files and a plain ImageFolder. Permuted / rotated MNIST read the real MNIST from
``CLF_DATA_DIR`` (default ``../shared/data``); missing data is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_framework.build import build_runner
from cl_framework.config_schema import validate_node
from cl_framework.errors import ConfigError, DataError
from cl_framework.run_config import ScenarioConfig, to_plain
from cl_framework.scenarios import (
    DataSource,
    build_scenario,
    cifar,
    load_auxiliary,
    load_source,
    load_unused_classes,
    tinyimagenet,
)
from cl_framework.scenarios.auxiliary import match_input_shape
from cl_framework.scenarios.domains import PixelPermutation, Rotation, rotate_uint8
from cl_framework.scenarios.imagenet import SHIPPED_CLASS_LISTS, read_class_list
from cl_framework.scenarios.sources import (
    _SOURCES,
    CLASS_SELECTION_OPTIONS,
    _keyword_options,
    available_sources,
)
from cl_framework.scenarios.transforms import BatchTransform
from tests.conftest import ROOT, shared_data_dir

COARSE_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]  # fmt: skip
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip
N_PATTERNED = 64  # rows of each CIFAR batch with random pixels; the rest is zero (fast gzip)


# --------------------------------------------------------------------------- fixture writers


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:N_PATTERNED] = np.random.default_rng(seed).integers(0, 256, (N_PATTERNED, 3072))
    return data


def _dump(obj: dict, path: Path) -> None:
    # Protocol 2 with str keys: what Python 2's cPickle wrote for the official files.
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ with 5 x 10000 training and 10000 test rows; returns the arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out: dict[str, np.ndarray] = {}
    for b, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        data = _cifar_rows(10_000, seed=b)
        labels = [(3 * i + b) % 10 for i in range(10_000)]
        _dump(
            {"batch_label": f"batch {b}", "labels": labels, "data": data,
             "filenames": [f"img_{b}_{i}.png" for i in range(10_000)]},
            folder / name,
        )  # fmt: skip
        out[name] = data
        out[name + "_labels"] = np.asarray(labels)
    _dump(
        {"num_cases_per_batch": 10_000, "label_names": CIFAR10_NAMES, "num_vis": 3072},
        folder / "batches.meta",
    )
    return out


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out: dict[str, np.ndarray] = {}
    for b, (name, n) in enumerate([("train", 50_000), ("test", 10_000)]):
        data = _cifar_rows(n, seed=10 + b)
        fine = (np.arange(n) * 7 + b) % 100
        _dump(
            {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": name,
             "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": data},
            folder / name,
        )  # fmt: skip
        out[name], out[name + "_fine"] = data, fine
    _dump(
        {"fine_label_names": [f"fine_{i:02d}" for i in range(100)],
         "coarse_label_names": COARSE_NAMES},
        folder / "meta",
    )  # fmt: skip
    return out


def _image(seed: int, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """A smooth image (flat colour plus a gentle gradient): survives JPEG almost exactly."""
    h, w = size
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, 3)
    ramp = np.linspace(0, 30, w)[None, :, None]
    img = np.clip(base[None, None, :] + ramp, 0, 255).astype(np.uint8).repeat(h, 0)
    return img[:, :, 0] if mode == "L" else img


def _save(path: Path, array: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, quality=95)


def write_tinyimagenet(root: Path, wnids: list[str], n_train: int, n_val: int) -> Path:
    """tiny-imagenet-200/ with wnids.txt in the given (unsorted) order, JPEG images."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    lines = []
    k = 0
    for c, wnid in enumerate(wnids):
        for i in range(n_train):
            _save(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                  _image(1000 * c + i, (64, 64)), "JPEG")  # fmt: skip
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for _ in range(n_val):
            _save(base / "val" / "images" / f"val_{k}.JPEG", _image(50_000 + k, (64, 64)), "JPEG")
            lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
            k += 1
    # interleave classes in the annotation file, as the real one does
    order = np.random.default_rng(0).permutation(len(lines))
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines[i] for i in order) + "\n")
    _save(base / "test" / "images" / "test_0.JPEG", _image(9, (64, 64)), "JPEG")
    return base


def write_imagenet(root: Path, wnids: list[str], n_train: int, n_val: int) -> Path:
    """imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG, images of varied size."""
    base = root / "imagenet"
    for c, wnid in enumerate(wnids):
        for i in range(n_train):
            size = (60 + 10 * (i % 3), 80)
            _save(base / "train" / wnid / f"{wnid}_{i}.JPEG", _image(100 * c + i, size), "JPEG")
        for i in range(n_val):
            _save(base / "val" / wnid / f"ILSVRC2012_val_{c:04d}{i:04d}.JPEG",
                  _image(7000 + 100 * c + i, (64, 64)), "JPEG")  # fmt: skip
    return base


def _tar(folder: Path, archive: Path, mode: str = "w:gz") -> str:
    with tarfile.open(archive, mode) as tf:
        tf.add(folder, arcname=folder.name)
    return hashlib.md5(archive.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root), write_cifar100(root)


def test_cifar10_reads_pickle_batches(cifar_dir) -> None:
    root, arrays, _ = cifar_dir
    src = load_source("cifar10", root, download=False)
    assert src.class_names == tuple(CIFAR10_NAMES)
    assert src.train_x.shape == (50_000, 3, 32, 32) and src.train_x.dtype == torch.uint8
    assert src.test_x.shape == (10_000, 3, 32, 32)
    # pixel round-trip: row = R plane, G plane, B plane, each 32x32 row-major
    row = arrays["data_batch_2"][5]
    assert torch.equal(src.train_x[10_005, 0], torch.from_numpy(row[:1024].reshape(32, 32)))
    assert torch.equal(src.train_x[10_005, 2], torch.from_numpy(row[2048:].reshape(32, 32)))
    assert torch.equal(src.test_x[:N_PATTERNED].reshape(N_PATTERNED, -1),
                       torch.from_numpy(arrays["test_batch"][:N_PATTERNED]))  # fmt: skip
    # class mapping: labels in file order across the five batches
    expected = np.concatenate([arrays[f"data_batch_{i}_labels"] for i in range(1, 6)])
    assert torch.equal(src.train_y, torch.from_numpy(expected))
    scenario = build_scenario(src, name="seq-cifar10", n_experiences=5)
    assert [exp.classes for exp in scenario] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [len(exp.train) for exp in scenario] == [10_000] * 5
    assert [len(exp.test) for exp in scenario] == [2_000] * 5


def test_cifar100_fine_coarse_and_auxiliary_superclasses(cifar_dir) -> None:
    root, _, arrays = cifar_dir
    fine = load_source("cifar100", root, download=False)
    assert fine.n_classes == 100 and fine.class_names[7] == "fine_07"
    assert torch.equal(fine.train_y, torch.from_numpy(arrays["train_fine"]))
    assert torch.equal(fine.train_x[:N_PATTERNED].reshape(N_PATTERNED, -1),
                       torch.from_numpy(arrays["train"][:N_PATTERNED]))  # fmt: skip
    coarse = load_source("cifar100", root, labels="coarse", download=False)
    assert coarse.class_names == tuple(COARSE_NAMES)
    assert torch.equal(coarse.train_y, fine.train_y // 5)

    aux = load_auxiliary("cifar100-coarse12", root, download=False)
    kept = [n for n in COARSE_NAMES if n not in cifar.CIFAR10_OVERLAPPING_SUPERCLASSES]
    assert aux.class_names == tuple(kept) and aux.n_classes == 12
    assert len(aux.train_y) == 12 * 2_500 and len(aux.test_y) == 12 * 500
    # relabelled 0..11 in source order, images follow their labels
    old = torch.tensor([COARSE_NAMES.index(n) for n in kept])
    keep = torch.isin(coarse.train_y, old)
    assert torch.equal(old[aux.train_y], coarse.train_y[keep])
    assert torch.equal(aux.train_x, coarse.train_x[keep])
    scenario = build_scenario(fine, name="seq-cifar100", n_experiences=10)
    assert [len(exp.train) for exp in scenario] == [5_000] * 10


def test_cifar_download_from_mirror_verifies_md5(cifar_dir, tmp_path, monkeypatch) -> None:
    root, _, _ = cifar_dir
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = _tar(root / "cifar-10-batches-py", mirror / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", replace(cifar.CIFAR10_ARCHIVE, md5=md5))
    target = tmp_path / "data"
    src = load_source("cifar10", target, mirrors=[mirror.as_uri() + "/"])
    assert (target / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(src.train_y) == 50_000
    # a local archive with the wrong checksum is refused with its path and both md5s
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", replace(cifar.CIFAR10_ARCHIVE, md5="0" * 32))
    placed = tmp_path / "placed"
    placed.mkdir()
    (placed / "cifar-10-python.tar.gz").write_bytes(
        (mirror / "cifar-10-python.tar.gz").read_bytes()
    )
    with pytest.raises(DataError, match="md5") as info:
        load_source("cifar10", placed, download=False)
    assert md5 in str(info.value) and "0" * 32 in str(info.value)
    # a download whose checksum does not match leaves nothing behind
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match="does not match") as info:
        load_source("cifar10", empty, mirrors=[mirror.as_uri() + "/"])
    assert not list(empty.iterdir())


def test_missing_cifar_lists_files_and_archive(tmp_path) -> None:
    with pytest.raises(DataError) as info:
        load_source("cifar100", tmp_path, download=False)
    message = str(info.value)
    for part in ("cifar-100-python", "train, test, meta", "cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "download=False"):  # fmt: skip
        assert part in message


def test_cifar_pickles_with_code_are_refused(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"):  # fmt: skip
        (folder / name).write_bytes(pickle.dumps({"x": Path("/etc")}))  # a non-array global
    with pytest.raises(DataError, match="refusing to load global"):
        load_source("cifar10", tmp_path, download=False)


# --------------------------------------------------------------------------- Tiny-ImageNet

TINY_WNIDS = ["n09999999", "n01443537", "n05555555", "n02123045", "n03000000", "n04000000"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_tinyimagenet(root, TINY_WNIDS, n_train=4, n_val=2)
    return root


def test_tinyimagenet_folders_and_val_annotations(tiny_dir: Path) -> None:
    src = load_source("tinyimagenet", tiny_dir, download=False, workers=2)
    assert src.class_names == tuple(sorted(TINY_WNIDS))  # class k = k-th wnid in sorted order
    assert src.train_x.shape == (24, 3, 64, 64) and src.test_x.shape == (12, 3, 64, 64)
    assert torch.equal(torch.bincount(src.train_y), torch.full((6,), 4))
    assert torch.equal(torch.bincount(src.test_y), torch.full((6,), 2))
    # test labels come from val_annotations.txt: check every row against its file
    base = tiny_dir / "tiny-imagenet-200"
    annotations = [line.split("\t") for line in
                   (base / "val" / "val_annotations.txt").read_text().splitlines()]  # fmt: skip
    for row, (fname, wnid, *_) in enumerate(annotations):
        assert src.class_names[int(src.test_y[row])] == wnid
        decoded = np.array(Image.open(base / "val" / "images" / fname).convert("RGB"))
        assert torch.equal(src.test_x[row], torch.from_numpy(decoded).permute(2, 0, 1))
    # pixel round-trip of a training image (JPEG: close to what was written)
    k = src.class_names.index("n05555555")
    first = int((src.train_y == k).nonzero()[0])
    written = torch.from_numpy(_image(1000 * TINY_WNIDS.index("n05555555"), (64, 64)))
    assert (src.train_x[first].permute(1, 2, 0).int() - written.int()).abs().max() <= 6

    half = load_source("tinyimagenet", tiny_dir, download=False, classes="0:3")
    assert half.class_names == src.class_names[:3] and len(half.train_y) == 12
    other = load_unused_classes("tinyimagenet", tiny_dir, {"classes": "0:3", "download": False})
    assert other.class_names == src.class_names[3:]
    assert torch.equal(other.test_x, src.test_x[src.test_y >= 3])
    assert torch.equal(other.test_y, src.test_y[src.test_y >= 3] - 3)
    small = load_source("tinyimagenet", tiny_dir, download=False, size=32, classes=[5, 0])
    assert small.train_x.shape[1:] == (3, 32, 32) and small.class_names == (
        src.class_names[5], src.class_names[0],
    )  # fmt: skip


def test_tinyimagenet_zip_download_and_broken_annotations(tiny_dir, tmp_path, monkeypatch) -> None:
    with pytest.raises(DataError, match=re.escape("val/val_annotations.txt")) as info:
        load_source("tinyimagenet", tmp_path / "nothing", download=False)
    assert "90528d7ca1a48142e341f4ef8d21d0de" in str(info.value)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "tiny-imagenet-200.zip"
    base = tiny_dir / "tiny-imagenet-200"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(tiny_dir))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(
        tinyimagenet, "TINYIMAGENET_ARCHIVE", replace(tinyimagenet.TINYIMAGENET_ARCHIVE, md5=md5)
    )
    src = load_source("tinyimagenet", tmp_path / "data", mirrors=[mirror.as_uri() + "/"])
    assert len(src.train_y) == 24

    broken = tmp_path / "data" / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    broken.write_text(broken.read_text() + "val_999.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt.*line 13"):
        load_source("tinyimagenet", tmp_path / "data", download=False)


# --------------------------------------------------------------------------- ImageNet-style


def test_imagenet_subset_with_shipped_and_custom_class_lists(tmp_path: Path) -> None:
    for name in SHIPPED_CLASS_LISTS:
        wnids = read_class_list(name)
        assert len(wnids) == 100 and len(set(wnids)) == 100, name
        assert all(w.startswith("n") and len(w) == 9 for w in wnids), name
    fg, aux = read_class_list("fg-imagenet"), read_class_list("imagenet100-aux")
    assert not set(fg) & set(aux)  # WSCL's auxiliary classes are disjoint from FG-ImageNet

    first = fg[:4]  # only the selected classes need to be on disk
    write_imagenet(tmp_path, first, n_train=3, n_val=2)
    src = load_source(
        "imagenet_subset", tmp_path, class_list="fg-imagenet", classes="0:4", size=32,
        interpolation="lanczos", workers=1,
    )  # fmt: skip
    assert src.class_names == tuple(first)  # class k = line k of the list
    assert src.train_x.shape == (12, 3, 32, 32) and src.test_x.shape == (8, 3, 32, 32)
    assert src.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert src.mean == (0.485, 0.456, 0.406)
    expected = Image.open(tmp_path / "imagenet" / "train" / first[1] / f"{first[1]}_2.JPEG")
    expected = expected.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    assert torch.equal(src.train_x[5], torch.from_numpy(np.array(expected)).permute(2, 0, 1))

    custom = tmp_path / "my_classes.txt"
    custom.write_text(f"# my list\n{first[3]}  extra words\n\n{first[0]}\n")
    mine = load_source("imagenet_subset", tmp_path, class_list="my_classes.txt", size=16)
    assert mine.class_names == (first[3], first[0]) and mine.train_y.tolist() == [0] * 3 + [1] * 3
    capped = load_source("imagenet_subset", tmp_path, class_list=str(custom), size=16,
                         max_train_per_class=2)  # fmt: skip
    assert capped.train_y.tolist() == [0, 0, 1, 1] and len(capped.test_y) == 4

    with pytest.raises(DataError, match=r"96 of 100 class folders are missing") as info:
        load_source("imagenet_subset", tmp_path, class_list="fg-imagenet", size=16)
    assert fg[4] in str(info.value) and "train/<wnid>" in str(info.value)
    with pytest.raises(DataError, match="never downloaded"):
        load_source("imagenet_subset", tmp_path / "none", class_list="miniimagenet")
    with pytest.raises(ConfigError, match="class_list"):
        load_source("imagenet_subset", tmp_path, class_list="no-such-list")


def test_imagenet_r_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    wnids = ["n01443537", "n01833805", "n02007558"]
    for c, wnid in enumerate(wnids):
        for i in range(10):
            _save(tmp_path / "imagenet-r" / wnid / f"art_{i}.jpg", _image(c * 50 + i, (50, 70)),
                  "JPEG")  # fmt: skip
    src = load_source("imagenet-r", tmp_path, size=24, download=False)
    assert src.class_names == tuple(wnids)
    assert torch.equal(torch.bincount(src.train_y), torch.tensor([8, 8, 8]))
    assert torch.equal(torch.bincount(src.test_y), torch.tensor([2, 2, 2]))
    again = load_source("imagenet-r", tmp_path, size=24, download=False)
    assert torch.equal(again.test_x, src.test_x)
    other = load_source("imagenet-r", tmp_path, size=24, download=False, split_seed=1)
    assert not torch.equal(other.test_x, src.test_x)
    with pytest.raises(DataError, match=re.escape("imagenet-r.tar")):
        load_source("imagenet-r", tmp_path / "none", download=False)


def test_cub200_official_index_files(tmp_path: Path) -> None:
    base = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    for c, folder in enumerate(classes):
        for i in range(4):
            rel = f"{folder}/{folder[4:]}_{i:04d}.jpg"
            _save(base / "images" / rel, _image(c * 10 + i, (40 + i, 60)), "JPEG")
            images.append(rel)
            labels.append(c + 1)
            split.append(1 if i < 3 else 0)
    ids = range(1, len(images) + 1)
    (base / "images.txt").write_text(
        "".join(f"{i} {p}\n" for i, p in zip(ids, images, strict=True))
    )
    (base / "image_class_labels.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in zip(ids, labels, strict=True))
    )
    (base / "train_test_split.txt").write_text(
        "".join(f"{i} {s}\n" for i, s in zip(ids, split, strict=True))
    )
    (base / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    src = load_source("cub200", tmp_path, size=32, download=False)
    assert src.class_names == ("Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross")
    assert src.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and src.test_y.tolist() == [0, 1, 2]
    assert src.train_x.shape == (9, 3, 32, 32)
    two = load_source(
        "cub200", tmp_path, size=32, download=False, exclude_classes=["Laysan_Albatross"]
    )
    assert two.class_names == ("Black_footed_Albatross", "Sooty_Albatross")
    assert two.test_y.tolist() == [0, 1]


def test_imagefolder_png_round_trip_and_split(tmp_path: Path) -> None:
    written = {}
    for c, name in enumerate(["zebra", "ant", "cat"]):
        for i in range(5):
            img = np.random.default_rng(c * 10 + i).integers(0, 256, (12, 10, 3), dtype=np.uint8)
            _save(tmp_path / "shapes" / name / f"{i}.png", img, "PNG")
            written[(name, i)] = img
    src = load_source("imagefolder", tmp_path, root="shapes", test_fraction=0.4, workers=1)
    assert src.class_names == ("ant", "cat", "zebra")
    assert len(src.train_y) == 9 and len(src.test_y) == 6
    stacked = {tuple(img.transpose(2, 0, 1).ravel()) for img in written.values()}
    for x in torch.cat([src.train_x, src.test_x]):  # every image comes back bit-exactly
        assert tuple(x.numpy().ravel()) in stacked
    flat = torch.cat([src.train_x, src.test_x]).double() / 255
    assert src.train_x.shape[1:] == (3, 12, 10)
    assert abs(src.mean[0] - float(src.train_x[:, 0].double().mean() / 255)) < 1e-9
    del flat

    for split, n in (("train", 3), ("val", 1)):
        for c, name in enumerate(["a", "b"]):
            for i in range(n):
                img = _image(c * 7 + i, (16, 16), mode="L")
                _save(tmp_path / "gray" / split / name / f"{i}.bmp", img, "BMP")
    gray = load_source("imagefolder", tmp_path, root=str(tmp_path / "gray"), channels=1)
    assert gray.train_x.shape == (6, 1, 16, 16) and gray.test_y.tolist() == [0, 1]
    assert torch.equal(gray.test_x[1, 0], torch.from_numpy(_image(7, (16, 16), mode="L")))
    with pytest.raises(ConfigError, match="root"):
        load_source("imagefolder", tmp_path)


# --------------------------------------------------------------------------- SVHN


def test_svhn_mat_files_and_extra_cap(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    folder = tmp_path / "svhn"
    folder.mkdir()
    arrays = {}
    for name, n in (("train", 30), ("test", 20), ("extra", 40)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 10 stands for digit 0
        savemat(folder / f"{name}_32x32.mat", {"X": x, "y": y})
        arrays[name] = (x, y)
    src = load_source("svhn", tmp_path, download=False)
    x, y = arrays["train"]
    assert src.train_x.shape == (30, 3, 32, 32)
    assert torch.equal(src.train_x[3], torch.from_numpy(x[:, :, :, 3].transpose(2, 0, 1).copy()))
    assert src.train_y[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    aux = load_auxiliary("svhn-extra5000", tmp_path, max_train_per_class=2, download=False)
    assert len(aux.train_y) == 20 and torch.equal(torch.bincount(aux.train_y), torch.full((10,), 2))
    assert torch.equal(
        aux.train_x[0], torch.from_numpy(arrays["extra"][0][..., 0].transpose(2, 0, 1).copy())
    )
    small = load_auxiliary("svhn", tmp_path, resize_to=(28, 28), to_channels=1, download=False)
    assert small.train_x.shape == (30, 1, 28, 28) and small.train_x.dtype == torch.uint8
    assert len(small.mean) == 1
    with pytest.raises(DataError, match=re.escape("extra_32x32.mat")) as info:
        load_source("svhn", tmp_path / "none", train_split="extra", download=False)
    assert "a93ce644f1a588dc4d68dda5feec44a7" in str(info.value)


def test_class_selection_errors_name_the_option(cifar_dir) -> None:
    root, _, _ = cifar_dir
    with pytest.raises(ConfigError, match=r"source_options.classes.*unknown class 'zebra'"):
        load_source("cifar10", root, download=False, classes=["cat", "zebra"])
    with pytest.raises(ConfigError, match=r"range '5:50' is outside 0:10"):
        load_source("cifar10", root, download=False, classes="5:50")
    with pytest.raises(ConfigError, match="selects no class"):
        load_source("cifar10", root, download=False, exclude_classes="0:10")
    with pytest.raises(ConfigError, match=re.escape("auxiliary.name")):
        load_auxiliary("cifar1000", root)
    pets = load_source("cifar10", root, download=False, classes=["dog", "cat"])
    assert pets.class_names == ("dog", "cat") and set(pets.train_y.tolist()) == {0, 1}


# --------------------------------------------------------------------------- batched augmentation


@pytest.mark.parametrize("shape", [(7, 3, 32, 32), (5, 1, 28, 20)])
def test_batch_transform_matches_per_sample_crop_and_flip(shape) -> None:
    """The batched crop (one gather) equals cropping each padded image with its own offsets."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    c, p = shape[1], 4
    transform = BatchTransform([0.5] * c, [0.25] * c, crop_padding=p, hflip=True, seed=3)
    out = transform.train(x)
    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order
    dy = torch.randint(0, 2 * p + 1, (shape[0],), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (shape[0],), generator=gen)
    flip = torch.rand(shape[0], generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    for n in range(shape[0]):
        crop = padded[n, :, dy[n] : dy[n] + shape[2], dx[n] : dx[n] + shape[3]]
        crop = crop.flip(-1) if flip[n] else crop
        assert torch.allclose(out[n], (crop.float() / 255 - 0.5) / 0.25)
    assert out.dtype == torch.float32 and out.shape == shape


# --------------------------------------------------------------------------- configs

SCENARIO_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "scenario").glob("*.yaml"))


@pytest.mark.parametrize("name", SCENARIO_CONFIGS)
def test_scenario_config_uses_only_options_its_source_accepts(make_config, name) -> None:
    """Every conf/scenario file composes, validates, and names options its loader takes."""
    cfg = make_config(f"scenario={name}")
    scenario = validate_node(to_plain(cfg)["scenario"], ScenarioConfig, "scenario")
    assert scenario.name == name
    assert scenario.source in available_sources()
    accepted = _keyword_options(_SOURCES[scenario.source])
    if accepted is not None:
        unknown = set(scenario.source_options) - accepted - set(CLASS_SELECTION_OPTIONS)
        assert not unknown, f"{name}: {scenario.source} has no options {unknown}"
    if scenario.setting == "domain-il":
        assert scenario.classes_per_experience is None and scenario.n_experiences == 20


# --------------------------------------------------------------------------- domain-IL (real)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    path = shared_data_dir()
    if not (path / "mnist").is_dir():
        pytest.fail(f"real MNIST not found under {path}: set CLF_DATA_DIR", pytrace=False)
    return path


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DataSource:
    return load_source("mnist", mnist_dir, download=False)


def test_perm_mnist_domains(mnist_dir: Path, mnist: DataSource) -> None:
    src = load_source("perm-mnist", mnist_dir, seed=3, base_options={"download": False})
    scenario = build_scenario(src, name="perm-mnist", setting="domain-il", n_experiences=3)
    assert scenario.setting == "domain-il" and scenario.n_classes == 10
    assert scenario.classes_up_to(2) == tuple(range(10))
    shift = src.domain_shift
    assert isinstance(shift, PixelPermutation)
    perms = [shift.permutation(k, 784) for k in range(3)]
    assert not torch.equal(perms[0], perms[1])
    for k, exp in enumerate(scenario):
        assert exp.classes == tuple(range(10)) and exp.task_label == k
        assert len(exp.train) == 60_000 and len(exp.test) == 10_000
        assert torch.equal(exp.train.y, mnist.train_y)
        # undo the permutation: the original digits come back exactly
        restored = torch.empty_like(exp.test.x.reshape(10_000, 1, 784))
        restored[:, :, perms[k]] = exp.test.x.reshape(10_000, 1, 784)
        assert torch.equal(restored.reshape(-1, 1, 28, 28), mnist.test_x)
        assert torch.equal(exp.train.x[:1000].flatten(1)[:, perms[k].argsort()],
                           mnist.train_x[:1000].flatten(1))  # fmt: skip
    # domain k depends only on (seed, k), not on how many domains are built
    fewer = build_scenario(src, name="perm-mnist", setting="domain-il", n_experiences=2)
    assert torch.equal(fewer[1].test.x, scenario[1].test.x)
    with pytest.raises(ConfigError, match=re.escape("scenario.classes_per_experience")):
        build_scenario(
            src, name="p", setting="domain-il", n_experiences=2, classes_per_experience=2
        )
    with pytest.raises(ConfigError, match=re.escape("scenario.setting")):
        build_scenario(src, name="p", setting="class-il", n_experiences=2)
    with pytest.raises(ConfigError, match="domain shift"):
        build_scenario(mnist, name="p", setting="domain-il", n_experiences=2)


def test_rot_mnist_domains(mnist_dir: Path, mnist: DataSource) -> None:
    src = load_source("rot-mnist", mnist_dir, base_options={"download": False})
    shift = src.domain_shift
    assert isinstance(shift, Rotation)
    angles = [shift.angle(k) for k in range(20)]
    assert all(0.0 <= a < 180.0 for a in angles) and len(set(angles)) == 20
    scenario = build_scenario(
        src, name="rot-mnist", setting="domain-il", n_experiences=2, val_fraction=0.1
    )
    for k, exp in enumerate(scenario):
        assert exp.classes == tuple(range(10)) and len(exp.train) + len(exp.val) == 60_000
        assert torch.equal(exp.test.x, rotate_uint8(mnist.test_x, angles[k]))
        assert torch.equal(exp.test.y, mnist.test_y)
    # the validation rows are the same digits in every domain
    assert torch.equal(scenario[0].val.y, scenario[1].val.y)
    fixed = load_source("rot-mnist", mnist_dir, angles=[0, 90], base_options={"download": False})
    two = build_scenario(fixed, name="rot", setting="domain-il", n_experiences=2)
    assert torch.equal(two[0].test.x, mnist.test_x)
    assert torch.equal(two[1].test.x, torch.rot90(mnist.test_x, 1, (2, 3)))
    with pytest.raises(ConfigError, match="angles"):
        build_scenario(fixed, name="rot", setting="domain-il", n_experiences=3)


def test_perm_mnist_runs_end_to_end(make_config, tmp_path, mnist_dir) -> None:
    """scenario=perm-mnist through the real config tree, 2 domains, ER, a few hundred steps."""
    cfg = make_config(
        "scenario=perm-mnist", "scenario.n_experiences=2", "strategy=[er]", "buffer.size=200",
        "trainer=seq-mnist", "trainer.batch_size=32", "trainer.limit_train_batches=150",
        "optimizer.lr=0.1", f"paths.data_dir={mnist_dir}",
    )  # fmt: skip
    runner = build_runner(cfg, tmp_path)
    assert runner.scenario.setting == "domain-il"
    result = runner.run()
    assert result.class_il.shape == (2, 2)
    # domain-IL: one head set for all experiences, so task-IL equals class-IL
    np.testing.assert_allclose(result.task_il, result.class_il)
    assert result.class_il[0, 0] > 80.0 and result.class_il[1, 1] > 80.0
    assert result.class_il[1, 0] > 60.0  # replay keeps the first permutation (chance: 10)
    # the second domain really is another input distribution: no transfer before training it
    assert result.class_il[0, 1] < 30.0


def test_auxiliary_options_reach_the_source_and_expand_channels(mnist_dir: Path) -> None:
    """``channels`` / ``size`` in the options go to the source (``resized``), and a 1 -> 3
    channel conversion without resizing copies the channel (it used to round a stride-0 view in
    place and crash)."""
    aux = load_auxiliary(
        "resized",
        mnist_dir,
        base="mnist",
        base_options={"download": False},
        size=32,
        channels=3,
        max_train_per_class=3,
        max_test_per_class=1,
    )
    assert aux.train_x.shape == (30, 3, 32, 32) and len(aux.mean) == 3
    gray = load_source("mnist", mnist_dir, download=False)
    rgb = match_input_shape(gray, None, 3)
    assert rgb.train_x.shape == (60000, 3, 28, 28) and len(rgb.mean) == 3
    assert torch.equal(rgb.train_x[:5, 2], gray.train_x[:5, 0])
