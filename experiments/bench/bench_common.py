"""Pieces shared by the benchmark contenders: data, the MLP, evaluation, thread count, output.

Deliberately independent of ``cl_framework`` (only torch + numpy), so that the hand-written
loop and the Avalanche contender do not pay for importing Lightning or Hydra, and so that the
data they train on is read by code the framework under test does not own.

Protocol (Seq-MNIST of the DER paper, Mammoth's ``seq-mnist``): MNIST train/test, 5 experiences
x 2 classes in natural order (0-1, 2-3, ...), inputs ``x / 255`` in [0, 1], no augmentation,
class-IL evaluation on every experience after each experience.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

THREADS_ENV = "BENCH_THREADS"
"""Intra-op thread count for every contender (default 1: faster than 2 here for tiny ops)."""

N_EXPERIENCES = 5
CLASSES_PER_EXPERIENCE = 2


@dataclass(frozen=True)
class DerppConfig:
    """DER++ on Seq-MNIST with Mammoth's best arguments for buffer 500 (DER paper, Table 2)."""

    buffer_size: int = 500
    batch_size: int = 10
    minibatch_size: int = 10
    lr: float = 0.03
    alpha: float = 1.0
    beta: float = 0.5
    epochs: int = 1


@dataclass
class ContenderResult:
    """What each contender reports on stdout / in its JSON (the parent adds RSS and wall)."""

    name: str
    final_avg_acc: float
    acc_matrix: list[list[float]]
    train_time_s: float
    steps: int
    threads: int
    train_cpu_s: float = 0.0  # process CPU time of training (robust to other load)
    wall_time_s: float = 0.0  # in-process wall time (data loading + training + evaluation)
    extra: dict = field(default_factory=dict)
    #: whole-process phases in seconds (start-up, data, train, evaluate), for RESULTS.md
    phases: dict = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.train_time_s if self.train_time_s > 0 else 0.0


def set_threads() -> int:
    """Apply ``$BENCH_THREADS`` (default 1) to torch's intra-op pool; returns the count."""
    n = int(os.environ.get(THREADS_ENV, "1"))
    torch.set_num_threads(n)
    return torch.get_num_threads()


def data_dir() -> Path:
    """``$CLF_DATA_DIR`` (the shared data folder), else ``../shared/data`` beside the repo."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get("CLF_DATA_DIR", default))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{stem}(.gz) not found in {folder}; set CLF_DATA_DIR")


@dataclass
class SeqMnist:
    """MNIST as uint8 (N, 1, 28, 28) / int64 tensors and the per-experience index lists."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def classes(self, i: int) -> list[int]:
        return list(range(i * CLASSES_PER_EXPERIENCE, (i + 1) * CLASSES_PER_EXPERIENCE))

    def _index(self, y: torch.Tensor, i: int) -> torch.Tensor:
        return torch.isin(y, torch.tensor(self.classes(i))).nonzero().squeeze(1)

    def train_index(self, i: int) -> torch.Tensor:
        return self._index(self.y_train, i)

    def test_index(self, i: int) -> torch.Tensor:
        return self._index(self.y_test, i)

    def steps(self, batch_size: int, limit: int | None = None, n_exp: int = N_EXPERIENCES) -> int:
        """Training steps of one epoch per experience (last batch kept, as in every contender)."""
        total = 0
        for i in range(n_exp):
            n = -(-len(self.train_index(i)) // batch_size)
            total += min(n, limit) if limit is not None else n
        return total


def load_seq_mnist(root: Path | None = None) -> SeqMnist:
    folder = (root or data_dir()) / "mnist"
    arrays = {
        stem: torch.from_numpy(_read_idx(_find(folder, stem)).copy())
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    }
    return SeqMnist(
        x_train=arrays["train-images-idx3-ubyte"].unsqueeze(1),
        y_train=arrays["train-labels-idx1-ubyte"].long(),
        x_test=arrays["t10k-images-idx3-ubyte"].unsqueeze(1),
        y_test=arrays["t10k-labels-idx1-ubyte"].long(),
    )


def build_mlp(n_classes: int = 10, hidden: int = 100) -> nn.Sequential:
    """Mammoth's ``MNISTMLP``: 784-100-100-10, xavier-uniform weights (gain 1), zero biases."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: SeqMnist, n_exp: int = N_EXPERIENCES, batch_size: int = 1000
) -> list[float]:
    """Class-IL accuracy (percent, argmax over all 10 units) on each experience's test set."""
    was_training = model.training
    model.eval()
    row = []
    for j in range(n_exp):
        idx = data.test_index(j)
        correct = 0
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            logits = model(data.x_test[b].float().div_(255.0))
            correct += int((logits.argmax(1) == data.y_test[b]).sum())
        row.append(100.0 * correct / max(len(idx), 1))
    model.train(was_training)
    return row


def final_avg_acc(matrix: list[list[float]]) -> float:
    """Mean of the last row of the accuracy matrix over all experiences."""
    return float(np.mean(matrix[-1])) if matrix else 0.0


class Stopwatch:
    """Accumulates wall seconds (``total``) and CPU seconds (``cpu``) in ``with`` blocks.

    ``cpu_clock`` is process CPU time by default; ``time.thread_time`` suits fine-grained
    phase timing on the training thread.
    """

    def __init__(self, cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.total = 0.0
        self.cpu = 0.0
        self._t0 = 0.0
        self._c0 = 0.0
        self._cpu_clock = cpu_clock

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        self._c0 = self._cpu_clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total += time.perf_counter() - self._t0
        self.cpu += self._cpu_clock() - self._c0


def write_result(result: ContenderResult, path: str | os.PathLike | None) -> None:
    payload = asdict(result)
    payload["steps_per_s"] = result.steps_per_s
    text = json.dumps(payload, indent=1)
    if path:
        Path(path).write_text(text)
    else:
        print(text)
