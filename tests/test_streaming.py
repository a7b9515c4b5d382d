"""Disk streaming (``scenario.storage=disk``) and the batched random-resized crop.

The fixture is a real ImageFolder of PNG and JPEG files of mixed sizes, written by the test.
Streaming must change nothing but where pixels live: the same batches (rows, order, bytes) for
any number of worker processes, the same remaining batches after a mid-epoch resume, and the
same ``metrics.json`` numbers as the in-memory run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cl_framework.build import build_runner
from cl_framework.engine.checkpoint import checkpoint_path, load_checkpoint
from cl_framework.errors import ConfigError, RunInterrupted
from cl_framework.scenarios import disk as disk_module
from cl_framework.scenarios import load_source
from cl_framework.scenarios.disk import (
    ImageFiles,
    Storage,
    batch_loader,
    eval_batches,
)
from cl_framework.scenarios.loader import epoch_seed
from cl_framework.scenarios.transforms import BatchTransform, RandomResizedCrop
from cl_framework.train import run
from tests.test_benchmarks import write_imagenet, write_tinyimagenet

CLASSES = ("ant", "bee", "cat", "dog")
PER_CLASS = 20
SIZE = 16
RESULT_KEYS = ("acc_matrix", "final_avg_acc", "forgetting", "bwt", "fwt", "random_init_acc")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<data_dir>/shapes/<class>/*``: PNG and JPEG, RGB / grayscale, sizes around 16 px."""
    data_dir = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            h, w = (12 + 4 * (i % 3), 24 - 4 * (i % 2))
            base = rng.integers(0, 200, 3) + 40 * c % 56
            pixels = np.clip(base + rng.integers(0, 56, (h, w, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i % 5 == 4:
                image = image.convert("L")
            path = data_dir / "shapes" / name / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=90)
    return data_dir


def _source(folder: Path, storage: str, **options):
    return load_source(
        "imagefolder",
        folder,
        storage=Storage(storage),
        root="shapes",
        size=SIZE,
        test_fraction=0.25,
        **options,
    )


# ---------------------------------------------------------------------------- source and rows


def test_disk_source_holds_paths_and_decodes_the_same_bytes(folder: Path) -> None:
    memory = _source(folder, "memory")
    disk = _source(folder, "disk")
    assert isinstance(memory.train_x, torch.Tensor)
    assert isinstance(disk.train_x, ImageFiles) and isinstance(disk.test_x, ImageFiles)
    assert disk.train_x.shape == memory.train_x.shape and disk.train_x.dtype == torch.uint8
    assert torch.equal(disk.train_x.load(), memory.train_x)
    assert torch.equal(disk.test_x.to("cpu"), memory.test_x)
    assert torch.equal(disk.train_y, memory.train_y) and torch.equal(disk.test_y, memory.test_y)
    assert disk.mean == memory.mean and disk.std == memory.std  # same chunked float64 sums

    x = disk.train_x
    rows = torch.tensor([5, 0, 7])
    assert isinstance(x[rows], ImageFiles) and isinstance(x[2:9:3], ImageFiles)
    assert isinstance(x[memory.train_y == 1], ImageFiles)
    assert torch.equal(x[rows].load(), memory.train_x[rows])
    assert torch.equal(x[4], memory.train_x[4]) and torch.equal(x[-1], memory.train_x[-1])
    joined = torch.cat([x[:3], x[10:12]])  # joint training concatenates experiences
    assert isinstance(joined, ImageFiles) and len(joined) == 5
    assert torch.equal(joined.clone(), torch.cat([memory.train_x[:3], memory.train_x[10:12]]))
    for whole_tensor_op in (lambda: torch.equal(x, x), lambda: x.float(), lambda: x[:, 0]):
        with pytest.raises(ConfigError, match=r"'scenario.storage'.*from disk"):
            whole_tensor_op()


def test_storage_auto_follows_the_memory_budget(folder: Path) -> None:
    n = PER_CLASS * len(CLASSES)
    needed_gb = n * 3 * SIZE * SIZE / 1e9
    small, large = Storage("auto", needed_gb / 2), Storage("auto", needed_gb * 2)
    assert isinstance(_src(folder, small).train_x, ImageFiles)
    assert isinstance(_src(folder, large).train_x, torch.Tensor)
    with pytest.raises(ConfigError, match=r"memory budget.*scenario.storage=disk"):
        _src(folder, Storage("memory", needed_gb / 2))
    with pytest.raises(ConfigError, match=r"'scenario.storage'.*cannot stream from disk"):
        load_source("digits", folder, storage=Storage("disk"))
    assert isinstance(_src(folder, "disk").train_x, ImageFiles)  # a mode name is enough
    with pytest.raises(ConfigError, match=r"'scenario\.storage': unknown storage 'disc'"):
        Storage("disc")


def _src(folder: Path, storage: Storage | str):
    return load_source(
        "imagefolder", folder, storage=storage, root="shapes", size=SIZE, test_fraction=0.25
    )


def _write_cub(root: Path) -> None:
    """CUB_200_2011/ with its four index files, 2 classes x 3 images (2 train, 1 test)."""
    base = root / "CUB_200_2011"
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for c, folder in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross"]):
        for i in range(3):
            image_id = 3 * c + i + 1
            rel = f"{folder}/{i}.jpg"
            _save_jpeg(base / "images" / rel, 100 * c + i, (30 + 7 * i, 40))
            lines["images.txt"].append(f"{image_id} {rel}")
            lines["image_class_labels.txt"].append(f"{image_id} {c + 1}")
            lines["train_test_split.txt"].append(f"{image_id} {int(i < 2)}")
    for name, rows in lines.items():
        (base / name).write_text("\n".join(rows) + "\n")
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")


def _save_jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.mark.parametrize("name", ["tinyimagenet", "imagenet_subset", "imagenet-r", "cub200"])
def test_every_folder_source_streams_the_same_bytes(tmp_path: Path, name: str) -> None:
    wnids = ["n01443537", "n01530575", "n01531178"]
    options: dict = {"size": 20}
    if name == "tinyimagenet":
        write_tinyimagenet(tmp_path, wnids, n_train=3, n_val=2)
        options["download"] = False
    elif name == "imagenet_subset":
        write_imagenet(tmp_path, wnids, n_train=3, n_val=2)
        (tmp_path / "list.txt").write_text("\n".join(wnids) + "\n")
        options["class_list"] = "list.txt"
    elif name == "imagenet-r":
        for c, wnid in enumerate(wnids):
            for i in range(5):
                _save_jpeg(tmp_path / "imagenet-r" / wnid / f"art_{i}.jpg", 10 * c + i, (30, 44))
        options["download"] = False
    else:
        _write_cub(tmp_path)
        options["download"] = False
    memory = load_source(name, tmp_path, storage="memory", **options)
    disk = load_source(name, tmp_path, storage="disk", **options)
    for split in ("train", "test"):
        files = getattr(disk, f"{split}_x")
        assert isinstance(files, ImageFiles) and len(files) > 0
        assert torch.equal(files.load(), getattr(memory, f"{split}_x"))
        assert torch.equal(getattr(disk, f"{split}_y"), getattr(memory, f"{split}_y"))
    assert disk.class_names == memory.class_names and disk.mean == memory.mean


# ---------------------------------------------------------------------------------- batches


def _epoch(x, y, *, seed: int, workers: int = 0, **kwargs) -> list:
    t = torch.zeros(len(y), dtype=torch.long)
    loader = batch_loader(x, y, t, 5, seed=seed, num_workers=workers, **kwargs)
    return list(loader)


def _flat(items: list) -> list[dict[str, torch.Tensor]]:
    return [b for item in items for b in (item if isinstance(item, list) else [item])]


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b) and len(a) > 0
    for p, q in zip(_flat(a), _flat(b), strict=True):
        assert set(p) == set(q) == {"x", "y", "t"}
        for key in p:
            assert p[key].dtype == q[key].dtype and torch.equal(p[key], q[key]), key


@pytest.mark.parametrize("workers", [0, 2])
def test_disk_batches_equal_memory_batches(folder: Path, workers: int, monkeypatch) -> None:
    memory, disk = _source(folder, "memory"), _source(folder, "disk")
    seed = epoch_seed(3, experience=1, epoch=2)
    reference = _epoch(memory.train_x, memory.train_y, seed=seed)
    _assert_same(_epoch(disk.train_x, disk.train_y, seed=seed, workers=workers), reference)
    assert len(reference) == math.ceil(len(memory.train_y) / 5)
    # another epoch seed is another order, the same in both modes
    other = _epoch(disk.train_x, disk.train_y, seed=seed + 1, workers=workers)
    assert not torch.equal(other[0]["y"], reference[0]["y"]) or not torch.equal(
        other[0]["x"], reference[0]["x"]
    )
    # mid-epoch resume: skip_batches gives exactly the remaining batches
    resumed = _epoch(disk.train_x, disk.train_y, seed=seed, workers=workers, skip_batches=3)
    _assert_same(resumed, reference[3:])
    # chunks of several optimizer steps, DDP slices and a capped epoch keep the same rows
    for kwargs in ({"steps_per_batch": 3}, {"rank": 1, "world_size": 2}, {"max_batches": 2}):
        _assert_same(
            _epoch(disk.train_x, disk.train_y, seed=seed, workers=workers, **kwargs),
            _epoch(memory.train_x, memory.train_y, seed=seed, **kwargs),
        )
    # evaluation: batches of 7 rows decoded in pieces of at most 3 rows, spread over workers
    monkeypatch.setattr(disk_module, "EVAL_DECODE_ROWS", 3)
    evaluated = list(eval_batches(disk.test_x, disk.test_y, 7, num_workers=workers))
    expected = list(eval_batches(memory.test_x, memory.test_y, 7))
    assert len(evaluated) == len(expected) == math.ceil(len(memory.test_y) / 7)
    for (xa, ya), (xb, yb) in zip(evaluated, expected, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_unreadable_file_in_a_worker_names_the_file(folder: Path, tmp_path: Path) -> None:
    disk = _source(folder, "disk")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths = disk.train_x.paths.copy()
    paths[2] = str(broken)
    files = ImageFiles(paths, disk.train_x.image_size)
    with pytest.raises(Exception, match=r"broken\.jpg.*cannot be read as an image") as info:
        _epoch(files, disk.train_y, seed=0, workers=1, shuffle=False)
    assert type(info.value).__name__ == "DataError"


# ------------------------------------------------------------------------------ end to end


def _overrides(storage: str, *extra: str) -> list[str]:
    return [
        "scenario.name=folder",
        "scenario.source=imagefolder",
        f"++scenario.source_options={{root: shapes, size: {SIZE}, test_fraction: 0.25}}",
        "scenario.n_experiences=2",
        "scenario.normalize=true",
        "scenario.hflip=true",
        "scenario.random_resized_crop={size: 12, scale: [0.3, 1.0]}",
        "scenario.center_crop=12",
        f"scenario.storage={storage}",
        "strategy=[derpp]",
        "buffer.size=16",
        "trainer.epochs=2",
        "trainer.batch_size=4",
        "trainer.steps_per_batch=2",
        "trainer.eval_batch_size=5",
        "trainer.num_workers=2",
        "trainer.num_threads=1",
        "trainer.log_every_n_steps=4",
        *extra,
    ]


def _assert_equal_state(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            _assert_equal_state(p, q, f"{where}[{i}]")
    else:
        assert a == b, where


def test_disk_run_gives_the_metrics_of_the_memory_run(make_config, folder, tmp_path) -> None:
    """clf-train on the fixture: DER++ with RRC + flip + replay, both storage modes. The same
    metrics, and the same final weights and replay buffer (un-augmented uint8 rows)."""
    results, states = {}, {}
    for storage in ("memory", "disk"):
        cfg = make_config(*_overrides(storage, f"paths.data_dir={folder}"))
        results[storage] = run(cfg, tmp_path / storage)
        states[storage] = load_checkpoint(checkpoint_path(tmp_path / storage))["training"]
    for key in RESULT_KEYS:
        assert results["disk"][key] == results["memory"][key], key
    assert results["disk"]["config"]["scenario"]["storage"] == "disk"
    assert 0 < results["memory"]["final_avg_acc"]["class_il"] < 100
    for part in ("model", "buffer", "transform", "position"):
        _assert_equal_state(states["disk"][part], states["memory"][part], part)
    assert states["disk"]["buffer"]["fields"]["x"].dtype == torch.uint8


def test_disk_run_interrupted_mid_epoch_resumes_exactly(
    make_config, folder, tmp_path, monkeypatch
) -> None:
    """Stopped by SIGINT inside an epoch of experience 1, resumed: the memory run's numbers."""
    fault = ("extra_modules=[tests.fault_injection]", "+strategy._fault={}")
    data = f"paths.data_dir={folder}"
    reference = run(make_config(*_overrides("memory", data, *fault)), tmp_path / "ref")
    monkeypatch.setenv("CLF_FAULT", "interrupt")
    monkeypatch.setenv("CLF_FAULT_STEP", "11")  # epoch 1, batch 3 of experience 0 (8 a epoch)
    stopped = tmp_path / "stopped"
    with pytest.raises(RunInterrupted):
        run(make_config(*_overrides("disk", data, *fault)), stopped)
    monkeypatch.delenv("CLF_FAULT")
    resumed = run({"resume": str(stopped)}, stopped, explicit_overrides=False)
    for key in RESULT_KEYS:
        assert resumed[key] == reference[key], key


def test_crops_set_the_network_input_shape(make_config, folder, tmp_path) -> None:
    runner = build_runner(make_config(*_overrides("disk", f"paths.data_dir={folder}")), tmp_path)
    assert runner.scenario.input_shape == (3, 12, 12)
    assert isinstance(runner.scenario[0].train.x, ImageFiles)
    assert runner.scenario[0].train.x.shape[1:] == (3, SIZE, SIZE)


def test_disk_storage_refuses_strategies_that_need_memory(make_config, folder, tmp_path) -> None:
    """One ConfigError naming scenario.storage, before any image is decoded or trained."""
    cfg = make_config(
        *_overrides("disk", f"paths.data_dir={folder}"), "strategy=[er,signature_probe]"
    )
    with pytest.raises(ConfigError, match=r"'scenario.storage'.*signature_probe.*in memory"):
        build_runner(cfg, tmp_path)
    cfg = make_config(*_overrides("memory", f"paths.data_dir={folder}"), "scenario.center_crop=8")
    with pytest.raises(ConfigError, match=r"'scenario.center_crop'.*differs"):
        build_runner(cfg, tmp_path)
    cfg = make_config(
        *_overrides("memory", f"paths.data_dir={folder}"), "+scenario.source_options.storage=disk"
    )
    with pytest.raises(ConfigError, match=r"'scenario.source_options.storage'.*scenario.storage="):
        build_runner(cfg, tmp_path)


# ----------------------------------------------------------------------- random-resized crop


def _rrc(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed: int = 0, **kw) -> BatchTransform:
    return BatchTransform(
        random_resized_crop=RandomResizedCrop(size, scale, ratio), seed=seed, **kw
    )


def test_random_resized_crop_shape_draws_and_seed() -> None:
    x = torch.randint(0, 256, (16, 3, 40, 30), dtype=torch.uint8)
    out = _rrc((24, 20)).train(x)
    assert out.shape == (16, 3, 24, 20) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    transform = _rrc((24, 20))
    first, second = transform.train(x), transform.train(x)
    assert not torch.equal(first, second)  # fresh draws on every call
    assert torch.equal(_rrc((24, 20)).train(x), out)  # the same seed gives the same crops
    assert not torch.equal(_rrc((24, 20), seed=1).train(x), out)
    # its generator state travels in checkpoints like the other augmentations'
    saved = transform.state_dict()
    again = transform.train(x)
    restored = _rrc((24, 20))
    restored.load_state_dict(saved)
    assert torch.equal(restored.train(x), again)


def test_random_resized_crop_of_the_whole_square_image_is_a_plain_resize() -> None:
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(_rrc((24, 24), **whole).train(x), x.float() / 255)
    resized = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(_rrc((32, 32), **whole).train(x), resized / 255)
    halved = F.avg_pool2d(x.float(), 2)  # = bilinear resize to half size
    torch.testing.assert_close(_rrc((12, 12), **whole).train(x), halved / 255)


def test_random_resized_crop_takes_windows_of_the_image() -> None:
    """scale 1/4, ratio 1 on 32 x 32: every output is an exact 16 x 16 window of its image."""
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    out = _rrc((16, 16), scale=(0.25, 0.25), ratio=(1.0, 1.0), seed=5).train(x) * 255
    windows = x.float().unfold(2, 16, 1).unfold(3, 16, 1)  # (8, 1, 17, 17, 16, 16)
    offsets = set()
    for n in range(len(x)):
        match = (windows[n, 0] - out[n, 0]).abs().amax((-2, -1)) < 1e-3
        assert match.any(), f"sample {n} is not a window of its image"
        offsets.add(tuple(match.nonzero()[0].tolist()))
    assert len(offsets) > 1  # positions are random


def test_center_crop_for_evaluation_and_training_without_rrc() -> None:
    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    transform = BatchTransform(center_crop=(16, 16))
    assert torch.equal(transform.to_float(x), x[:, :, 2:18, 2:18].float() / 255)
    assert torch.equal(transform.train(x), transform.to_float(x))
    rrc = _rrc((16, 16), center_crop=(16, 16), hflip=True)
    assert rrc.train(x).shape == rrc.to_float(x).shape == (2, 3, 16, 16)
