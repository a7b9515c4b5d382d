"""Table of bad inputs (configs, data files, checkpoints): each must raise one error of the
expected class naming the culprit, before any training, leaving no (corrupt) output behind."""

from __future__ import annotations

import gzip
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cl_framework.engine.checkpoint import checkpoint_path
from cl_framework.errors import CheckpointError, ConfigError, DataError
from cl_framework.train import run
from tests.conftest import compose_config, shared_data_dir


class NotATensor:
    """Any pickled object: a checkpoint holding one must be refused unread."""

    def __reduce__(self):
        return (print, ("this code must never run on load",))


@dataclass
class Case:
    name: str
    overrides: list[str]
    error: type[Exception]
    culprit: str  # must appear in the message (a key or a file name)
    prepare: Callable[[Path], None] | None = None  # edits the per-case data/ckpt dir


def copy_mnist(dst: Path) -> Path:
    (dst / "mnist").mkdir(parents=True)
    for f in (shared_data_dir() / "mnist").iterdir():
        shutil.copy(f, dst / "mnist" / f.name)
    return dst / "mnist"


def truncate_images(root: Path) -> None:
    f = copy_mnist(root / "data") / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100_000])


def garbage_labels(root: Path) -> None:
    f = copy_mnist(root / "data") / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(b"not a gzip file at all")


def short_labels(root: Path) -> None:
    f = copy_mnist(root / "data") / "train-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(struct.pack(">II", 0x801, 100) + bytes(100)))


def bad_magic(root: Path) -> None:
    f = copy_mnist(root / "data") / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(struct.pack(">IIII", 0x999, 1, 28, 28) + bytes(784)))


def empty_dir(root: Path) -> None:
    (root / "data").mkdir()


def ckpt_missing(root: Path) -> None:
    (root / "run").mkdir()


def ckpt_pickled_object(root: Path) -> None:
    path = checkpoint_path(root / "run")
    path.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "evil": NotATensor()}, path)


def ckpt_truncated(root: Path, good: Path) -> None:
    path = checkpoint_path(root / "run")
    path.parent.mkdir(parents=True)
    path.write_bytes(checkpoint_path(good).read_bytes()[:5000])


def ckpt_foreign(root: Path) -> None:
    path = checkpoint_path(root / "run")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)


def ckpt_other_class_order(root: Path, good: Path) -> None:
    payload = torch.load(checkpoint_path(good), weights_only=True)
    payload["class_order"] = list(reversed(payload["class_order"]))
    payload["config"]["scenario"]["class_order_seed"] = None
    path = checkpoint_path(root / "run")
    path.parent.mkdir(parents=True)
    torch.save(payload, path)


def ckpt_other_strategies(root: Path, good: Path) -> None:
    payload = torch.load(checkpoint_path(good), weights_only=True)
    payload["training"]["plugins"][0]["name"] = "er"  # state of another strategy list
    path = checkpoint_path(root / "run")
    path.parent.mkdir(parents=True)
    torch.save(payload, path)


CASES = [
    Case("unknown strategy key", ["+strategy.derpp.alpah=1"], ConfigError, "strategy.derpp.alpah"),
    Case("wrong type", ["strategy.derpp.beta=high"], ConfigError, "strategy.derpp.beta"),
    Case("unknown top-level key", ["+lr=0.1"], ConfigError, "'lr'"),
    Case("classes not divisible", ["scenario.n_experiences=4"], ConfigError, "scenario."),
    Case("more experiences than classes", ["scenario.n_experiences=20"], ConfigError,
         "scenario.n_experiences"),
    Case("replay with empty buffer", ["strategy=[der]", "buffer.size=0"], ConfigError,
         "buffer.size"),
    Case("negative lr", ["optimizer.lr=-1"], ConfigError, "optimizer.lr"),
    Case("bad val fraction", ["scenario.val_fraction=1.5"], ConfigError, "scenario.val_fraction"),
    Case("unknown logger", ["+logger.mlflow={}"], ConfigError, "logger.mlflow"),
    Case("bad precision", ["trainer.precision=17"], ConfigError, "unknown precision '17'"),
    Case("unknown accelerator", ["trainer.accelerator=tpu"], ConfigError, "trainer.accelerator"),
    Case("zero threads", ["trainer.num_threads=0"], ConfigError, "trainer.num_threads"),
    Case("missing data dir files",
         ["scenario=seq-mnist", "+scenario.source_options.download=false"],
         DataError, "train-images-idx3-ubyte", empty_dir),
    Case("truncated images", ["scenario=seq-mnist"], DataError, "train-images-idx3-ubyte.gz",
         truncate_images),
    Case("corrupt gzip labels", ["scenario=seq-mnist"], DataError, "t10k-labels-idx1-ubyte.gz",
         garbage_labels),
    Case("label count mismatch", ["scenario=seq-mnist"], DataError, "train-labels-idx1-ubyte",
         short_labels),
    Case("bad IDX magic", ["scenario=seq-mnist"], DataError, "t10k-images-idx3-ubyte.gz",
         bad_magic),
    Case("resume without checkpoint", ["resume=RUN"], CheckpointError, "last.ckpt", ckpt_missing),
    Case("checkpoint with pickled object", ["resume=RUN"], CheckpointError, "last.ckpt",
         ckpt_pickled_object),
    Case("truncated checkpoint", ["resume=RUN"], CheckpointError, "last.ckpt", ckpt_truncated),
    Case("foreign checkpoint", ["resume=RUN"], CheckpointError, "not a cl_framework",
         ckpt_foreign),
    Case("checkpoint with other class order", ["resume=RUN"], CheckpointError, "class order",
         ckpt_other_class_order),
    Case("checkpoint of other strategies", ["resume=RUN"], CheckpointError, "strategies",
         ckpt_other_strategies),
    Case("resume with a different command line", ["resume=GOOD", "seed=7"], ConfigError, "seed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished tiny seq-digits run with a checkpoint, to derive bad checkpoints from."""
    run_dir = tmp_path_factory.mktemp("good")
    cfg = compose_config(["experiment=seq-digits/derpp", "trainer.epochs=1"])
    run(cfg, run_dir)
    return run_dir


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_training(case: Case, tmp_path, good_run, monkeypatch):
    assert len(CASES) >= 15
    if case.prepare is not None:
        takes_good = case.prepare.__code__.co_argcount == 2
        case.prepare(tmp_path, good_run) if takes_good else case.prepare(tmp_path)
    overrides = [
        o.replace("RUN", str(tmp_path / "run")).replace("GOOD", str(good_run))
        for o in case.overrides
    ]
    if (tmp_path / "data").exists():
        overrides.append(f"paths.data_dir={tmp_path / 'data'}")
    trained = []
    monkeypatch.setattr(
        "cl_framework.engine.runner.ContinualRunner.run", lambda self: trained.append(1)
    )
    before_good = snapshot(good_run)
    out = tmp_path / "out"
    with pytest.raises(case.error) as info:
        run(compose_config(overrides), out, explicit_overrides="seed=7" in overrides)
    assert case.culprit in str(info.value)
    assert not trained
    assert not (out / "metrics.json").exists() and not checkpoint_path(out).exists()
    assert snapshot(good_run) == before_good  # a resumed-from run dir is never touched


def test_gpu_accelerator_without_a_gpu_is_refused(monkeypatch):
    """``trainer.accelerator=gpu`` on a machine without CUDA: our error, not a CUDA traceback."""
    from cl_framework.run_config import validate_run_config
    from tests.conftest import compose_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU") as info:
        validate_run_config(compose_config(["trainer.accelerator=gpu"]))
    assert info.value.key == "trainer.accelerator"
