"""Batched on-device augmentation (``BatchTransform``) vs per-sample torchvision transforms.

Both paths turn the same CIFAR-shaped uint8 images (N, 3, 32, 32) into normalised float training
batches with random crop (padding 4) + horizontal flip:

- ``batched``: what the framework does. Index a batch out of the in-memory uint8 tensor
  (as ``TensorBatchLoader`` does) and call ``BatchTransform.train`` on the whole batch.
- ``per-sample PIL``: the classic pipeline of Mammoth and most CL code bases. A map-style Dataset
  turns each uint8 HWC array into a PIL image and applies ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)``; a ``DataLoader`` collates
  the batch (``num_workers`` worker processes; 0 = in the main process).
- ``per-sample v2``: the same four steps with ``torchvision.transforms.v2`` on uint8 tensors
  (no PIL), per sample, in the main process.

Each configuration runs over the whole data set once after a warm-up batch; the figure is
images per second of wall time (best of ``--repeats``). Run::

    .venv/bin/python experiments/augmentation/bench_augment.py            # prints + RESULTS.md
    .venv/bin/python experiments/augmentation/bench_augment.py --quick    # smaller, no file
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import v2

from cl_framework.scenarios.cifar import CIFAR10_MEAN, CIFAR10_STD
from cl_framework.scenarios.transforms import BatchTransform

HERE = Path(__file__).resolve().parent


class PILAugmentDataset(Dataset):
    """Per-sample path: uint8 HWC array -> PIL -> torchvision transforms, one image at a time."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray) -> None:
        self.images = images_hwc
        self.labels = labels
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def time_images_per_s(run_epoch: Callable[[], int], repeats: int) -> float:
    """Best images/s over ``repeats`` full passes (each pass returns the images it produced)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = run_epoch()
        best = max(best, n / (time.perf_counter() - start))
    return best


def bench_batched(x: torch.Tensor, batch_size: int, device: torch.device, repeats: int) -> float:
    transform = BatchTransform(CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, hflip=True, seed=0)
    data = x.to(device)
    generator = torch.Generator().manual_seed(0)
    transform.train(data[:batch_size])  # warm-up (generator, statistics, kernels)

    def epoch() -> int:
        order = torch.randperm(len(data), generator=generator).to(device)
        for start in range(0, len(data), batch_size):
            out = transform.train(data[order[start : start + batch_size]])
        if device.type == "cuda":
            torch.cuda.synchronize()
        del out
        return len(data)

    return time_images_per_s(epoch, repeats)


def bench_per_sample_pil(
    x_hwc: np.ndarray, y: np.ndarray, batch_size: int, workers: int, repeats: int
) -> float:
    loader = DataLoader(
        PILAugmentDataset(x_hwc, y),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    next(iter(loader))  # warm-up (starts the workers)

    def epoch() -> int:
        n = 0
        for xb, _ in loader:
            n += len(xb)
        return n

    return time_images_per_s(epoch, repeats)


def bench_per_sample_v2(x: torch.Tensor, batch_size: int, repeats: int) -> float:
    transform = v2.Compose(
        [
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    generator = torch.Generator().manual_seed(0)

    def epoch() -> int:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            out = torch.stack([transform(x[i]) for i in idx])
        del out
        return len(x)

    return time_images_per_s(epoch, repeats)


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {cores} usable cores, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"GPU: {gpu}; 1-min load average at the end of the run: {load:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images (CIFAR-shaped, synthetic)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch intra-op thread counts for the batched CPU path (per-sample paths use 1)",
    )
    parser.add_argument("--quick", action="store_true", help="2000 images, 1 repeat, no file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pixels")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 2_000, 1
    torch.set_num_threads(1)

    rng = np.random.default_rng(args.seed)
    x_hwc = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.n)
    x = torch.from_numpy(x_hwc).permute(0, 3, 1, 2).contiguous()  # same pixels, (N, C, H, W)

    rows: list[tuple[int, str, float]] = []
    for bs in args.batch_sizes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows.append((bs, f"batched BatchTransform (cpu, {threads} thread{'s' * (threads > 1)})",
                         bench_batched(x, bs, torch.device("cpu"), args.repeats)))  # fmt: skip
        torch.set_num_threads(1)
        if torch.cuda.is_available():
            rows.append((bs, "batched BatchTransform (cuda)",
                         bench_batched(x, bs, torch.device("cuda"), args.repeats)))  # fmt: skip
        for workers in args.workers:
            rows.append((bs, f"per-sample PIL + DataLoader (num_workers={workers})",
                         bench_per_sample_pil(x_hwc, y, bs, workers, args.repeats)))  # fmt: skip
        rows.append((bs, "per-sample torchvision.v2 on tensors (main process)",
                     bench_per_sample_v2(x, bs, args.repeats)))  # fmt: skip

    lines = ["| batch | path | images/s | batched CPU / this |", "|---:|---|---:|---:|"]
    for bs in args.batch_sizes:
        group = [r for r in rows if r[0] == bs]
        reference = group[0][2]
        for _, path, ips in group:
            lines.append(f"| {bs} | {path} | {ips:,.0f} | {reference / ips:.1f}x |")
    table = "\n".join(lines)
    machine = machine_description()
    print(f"{args.n} CIFAR-shaped uint8 images, crop(32, padding 4) + hflip + normalise")
    print(f"machine: {machine}\n")
    print(table)
    if not args.quick:
        args.output.write_text(results_markdown(args, machine, table))
        print(f"\nwritten: {args.output}")


def results_markdown(args: argparse.Namespace, machine: str, table: str) -> str:
    return f"""# Batched vs per-sample augmentation

Written by `experiments/augmentation/bench_augment.py` (run it to refresh this file).

Task: turn {args.n:,} CIFAR-shaped uint8 images (3 x 32 x 32, synthetic pixels: throughput does not
depend on content) into normalised float training batches with random crop (32, padding 4) and
random horizontal flip, one full pass per measurement, best of {args.repeats} passes after a
warm-up batch.

- **batched BatchTransform**: the framework's path; index a batch out of the in-memory uint8 tensor
  and augment the whole batch at once on the device (`cl_framework.scenarios.transforms`).
- **per-sample PIL + DataLoader**: Mammoth's / torchvision's classic path; `Image.fromarray` per
  sample, `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize`, batches
  collated by a `DataLoader` with `num_workers` worker processes.
- **per-sample torchvision.v2**: the same transforms from `torchvision.transforms.v2` on uint8
  tensors, one sample at a time, stacked.

Machine: {machine}.

{table}

The last column is how many times faster the first row of each batch size (batched, CPU, one
intra-op thread) is than each row. Per-sample rows run with one intra-op thread (DataLoader
workers use one each). With several OpenMP threads on a machine whose cores are busy with other
work the batched path slows down sharply (threads wait for each other at every kernel): compare
the two batched CPU rows with the load average above, and set `torch.set_num_threads` to the
cores that are really free. No GPU was available for this run; on a GPU the batched path runs
where the model does and the per-sample path still runs on the CPU.

Online CL benchmarks train with batches of 10 (Seq-MNIST, SER) to 32 (Seq-CIFAR), where the
per-sample overhead dominates. Replayed buffer rows (stored un-augmented) go through the same
batched transform, so a DER++ step that draws two buffer batches augments three batches without
any per-sample Python. The random crop is one `gather` over the flattened padded batch; it
replaced a 4-way advanced-indexing crop that gave identical results about 4-7x slower on CPU
(`tests/test_benchmarks.py` checks the batched crop and flip against a per-sample reference).
"""


if __name__ == "__main__":
    main()
