"""Disk streaming (``scenario.storage=disk``) vs in-memory images: training batches per second.

A folder of JPEG files (ImageNet-like: 500 x 375, one folder per class) is generated, then read
through the framework's own path, as training consumes it:

- ``memory``: ``load_source("imagefolder", ..., storage="memory")`` decodes every file once
  (thread pool) into a uint8 tensor; an epoch indexes batches out of it (``TensorBatchLoader``).
  The one-time decoding is timed separately.
- ``disk, N workers``: ``storage="disk"`` keeps the paths; an epoch's batches are decoded by a
  ``DataLoader`` with N worker processes (0 = in the training process) (``DiskBatchLoader``).

Two figures per path, in images per second of wall time over one shuffled epoch (best of
``--repeats``): the loader alone (uint8 batches), and the loader followed by the training
transform of ``seq-imagenet-r`` / ``seq-cub200`` (``BatchTransform``: random-resized crop
256 -> 224, flip, normalisation; batched, one intra-op thread), i.e. what a training loop would
be fed. The loaders are also checked to deliver byte-identical batches. Run::

    .venv/bin/python experiments/streaming/bench_streaming.py            # prints + RESULTS.md
    .venv/bin/python experiments/streaming/bench_streaming.py --quick    # smaller, no file
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from cl_framework.scenarios import load_source
from cl_framework.scenarios.disk import batch_loader
from cl_framework.scenarios.images import IMAGENET_MEAN, IMAGENET_STD
from cl_framework.scenarios.loader import epoch_seed
from cl_framework.scenarios.transforms import BatchTransform, RandomResizedCrop

HERE = Path(__file__).resolve().parent


def write_jpegs(root: Path, n_images: int, n_classes: int, size: tuple[int, int]) -> int:
    """``root/c<k>/<i>.jpg``: smooth colour fields plus noise (photo-like JPEG sizes)."""
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    total = 0
    for i in range(n_images):
        folder = root / f"c{i % n_classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0.005, 0.05, 3)
        field = np.stack([np.sin(a * xx + i), np.cos(b * yy - i), np.sin(c * (xx + yy))], axis=-1)
        noise = rng.normal(0, 12, (h, w, 3))
        pixels = np.clip(127 + 100 * field + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def epoch_images_per_s(
    x, y, transform: BatchTransform | None, batch_size: int, workers: int
) -> tuple[float, float]:
    """One shuffled epoch: load every batch (and run the training transform on it).
    Returns images/s and the seconds until the first batch arrived (worker start-up)."""
    t = torch.zeros(len(y), dtype=torch.long)
    loader = batch_loader(
        x, y, t, batch_size, seed=epoch_seed(0, 0, 0), num_workers=workers, steps_per_batch=1
    )
    start = time.perf_counter()
    first = None
    n = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        if transform is not None:
            transform.train(batch["x"])
        n += len(batch["y"])
    return n / (time.perf_counter() - start), float(first or 0.0)


def first_batches(x, y, batch_size: int, workers: int, k: int = 3) -> list[torch.Tensor]:
    t = torch.zeros(len(y), dtype=torch.long)
    loader = batch_loader(x, y, t, batch_size, seed=7, num_workers=workers, max_batches=k)
    return [b["x"] for b in loader]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=800)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="decoded (stored) size")
    parser.add_argument("--crop", type=int, default=224, help="random-resized crop size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="300 images, 1 repeat, no file")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.n_images, args.repeats = 300, 1
    torch.set_num_threads(1)
    wall = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="clf-streaming-"))
    try:
        start = time.perf_counter()
        nbytes = write_jpegs(tmp / "jpegs", args.n_images, args.classes, (375, 500))
        print(
            f"wrote {args.n_images} JPEGs (500x375, {nbytes / 1e6:.1f} MB) in "
            f"{time.perf_counter() - start:.1f}s"
        )
        options = dict(root="jpegs", size=args.size, test_fraction=0.1)
        start = time.perf_counter()
        memory = load_source("imagefolder", tmp, storage="memory", **options)
        decode_s = time.perf_counter() - start  # includes the mean/std pass (in memory)
        start = time.perf_counter()
        disk = load_source("imagefolder", tmp, storage="disk", **options)
        disk_load_s = time.perf_counter() - start  # scanning + the mean/std decoding pass
        n_train = len(memory.train_y)
        transform = BatchTransform(
            IMAGENET_MEAN,
            IMAGENET_STD,
            hflip=True,
            random_resized_crop=RandomResizedCrop((args.crop, args.crop)),
        )
        reference = first_batches(memory.train_x, memory.train_y, args.batch_size, 0)
        for workers in args.workers:
            got = first_batches(disk.train_x, disk.train_y, args.batch_size, workers)
            assert all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))
        rows = []
        configs = [("memory (uint8 tensor)", memory, 0)] + [
            (f"disk, num_workers={w}", disk, w) for w in args.workers
        ]
        for name, source, workers in configs:
            bare, full = (
                max(
                    epoch_images_per_s(source.train_x, source.train_y, tf, args.batch_size, workers)
                    for _ in range(args.repeats)
                )
                for tf in (None, transform)
            )
            rows.append((name, bare[0], full[0], bare[1]))
            print(f"{name:28s} {bare[0]:8.0f} {full[0]:8.0f} images/s")
        load = os.getloadavg()[0]
        table = [
            "| path | loader only, images/s | vs memory | first batch, ms | loader + "
            "RRC/flip/normalise, images/s | vs memory |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, bare, full, first in rows:
            table.append(
                f"| {name} | {bare:,.0f} | {bare / rows[0][1]:.3f}x | {1000 * first:.0f} "
                f"| {full:,.0f} | {full / rows[0][2]:.2f}x |"
            )
        disk_rows = rows[1:]
        disk0 = next((r for r in disk_rows if r[0].endswith("num_workers=0")), disk_rows[0])
        best = max(disk_rows, key=lambda r: r[2])
        most = disk_rows[-1]
        text = RESULTS_TEMPLATE.format(
            n=args.n_images,
            n_train=n_train,
            mb=nbytes / 1e6,
            size=args.size,
            crop=args.crop,
            batch=args.batch_size,
            repeats=args.repeats,
            table="\n".join(table),
            decode_s=decode_s,
            decode_rate=(n_train + len(memory.test_y)) / decode_s,
            disk_load_s=disk_load_s,
            per_file_ms=1000.0 / disk0[1],
            transform_rate=rows[0][2],
            best_name=best[0],
            best_rate=best[2],
            best_ratio=best[2] / rows[0][2],
            first0=1000 * disk0[3],
            first_most=1000 * most[3],
            most_name=most[0],
            cpus=len(os.sched_getaffinity(0)),
            load=load,
            machine=machine_line(load),
            wall=time.perf_counter() - wall,
        )
        print(text)
        if not args.quick:
            args.out.write_text(text)
            print(f"written to {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def machine_line(load: float) -> str:
    cpus = len(os.sched_getaffinity(0))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{platform.processor() or platform.machine()}, {cpus} usable cores, torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}, Pillow "
        f"{Image.__version__}, Python {platform.python_version()}; GPU: {gpu}; 1-min load "
        f"average at the end of the run: {load:.1f}"
    )


RESULTS_TEMPLATE = """# Disk streaming vs in-memory images

Written by `experiments/streaming/bench_streaming.py` (run it to refresh this file; about
{wall:.0f} s here).

Task: {n} generated JPEG files (500 x 375, {mb:.1f} MB, one folder per class; {n_train} in the
training split) read through `load_source("imagefolder", size={size})` and turned into training
batches of {batch}. Two figures per path: the loader alone (uint8 batches), and the loader
followed by the training transform of `seq-imagenet-r` / `seq-cub200` (random-resized crop
{size} -> {crop}, flip, normalisation; `BatchTransform`, batched, one intra-op thread). One
shuffled epoch per measurement, best of {repeats}. The disk loaders were checked to yield
byte-identical batches to the memory loader.

- **memory**: `scenario.storage=memory`. Every file is decoded once into a uint8 tensor; epochs
  index batches out of it. The one-time decoding took {decode_s:.1f} s ({decode_rate:,.0f}
  images/s, thread pool, mean/std pass included) and is not in the figure below.
- **disk, num_workers=N**: `scenario.storage=disk`, `trainer.num_workers=N`. The split holds
  file paths; every epoch decodes its batches again (JPEG decode + PIL resize to {size}) in N
  `DataLoader` worker processes (0 = in the training process). Loading the source took
  {disk_load_s:.1f} s (scan + the mean/std decoding pass that `imagefolder` needs).

Machine: {machine}.

{table}

Reading: once decoded, memory mode only indexes a tensor, so it is the ceiling; disk mode
decodes again on every epoch (JPEG decode + PIL resize: {per_file_ms:.1f} ms per 500 x 375 file
in the training process here, `num_workers=0`). With the training transform on the CPU
({transform_rate:,.0f} images/s from memory) the gap narrows. The fastest disk configuration of
this run was "{best_name}" ({best_rate:,.0f} images/s with the transform, {best_ratio:.2f}x
memory). Worker processes start at every epoch (first batch after {first0:.0f} ms in-process,
{first_most:.0f} ms for "{most_name}") and pay off only when they find idle cores: this machine
has {cpus} usable cores and a 1-min load average of {load:.1f} at the end of the run (other jobs
share it), so extra processes mostly competed with the training process for the same cores.
On a node with free cores, set `trainer.num_workers` to the cores the training process does not
use; on a GPU the batched transform also leaves the CPU to the decoding workers. Prefer
`storage=memory` (or `auto`) whenever the decoded images fit: disk mode pays the decoding on
every epoch, memory mode once. Results do not depend on the mode or the number of workers
(`tests/test_streaming.py`).
"""


if __name__ == "__main__":
    main()
