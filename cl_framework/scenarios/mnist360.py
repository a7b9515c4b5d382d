"""MNIST-360, the general continual-learning stream of the DER paper (Buzzega et al. 2020,
Sec. 5), built as Mammoth's ``mnist-360`` dataset (commit 7ab9db9) builds it.

Digits 0-8 only. The training stream visits the class pairs (0, 1), (1, 2), ..., (8, 0) three
times (27 segments). Class ``j``'s training images are cut into 6 consecutive chunks (of
``n_j // 6 + 1``); each time ``j`` enters a pair it takes its next unused chunk, last first.
A segment is drawn batch by batch: each batch holds the two classes in proportion to what
their chunks have left, and the segment ends when one of the two chunks is used up (the
other's remainder is dropped). Each image drawn is a uniform pick *with replacement* from its
chunk (Mammoth draws ``next(iter(shuffled_loader))`` once per sample) and is rotated by
``(j - 1) * 60 + k * 360 / n_j`` degrees, ``k`` the number of class-``j`` images drawn so far
(counter-clockwise, nearest neighbour, zero fill): the digits turn slowly through the stream.

Test: every MNIST test image of classes 0-8, class ``j``'s rotated by ``r * 360 / n_test_j``,
``r`` its rank in a seeded random order (Mammoth samples its test batches with replacement in
a random order; here each test image is used once).

The training rows are in stream order and must not be shuffled: the source is ``ordered``,
and the loader keeps that order. Batches are cut from the flat stream at ``trainer.batch_size``,
so about one batch per segment boundary mixes two pairs (Mammoth starts a new batch there).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cl_framework.errors import ConfigError
from cl_framework.scenarios.sources import DataSource, load_source, register_source

N_CLASSES = 9
ROUNDS = 3
CHUNKS_PER_CLASS = 2 * ROUNDS
_ROTATE_CHUNK = 8192


def rotate_each(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each uint8 image of ``x`` (N, C, H, W) counter-clockwise by its own angle about
    the centre, nearest neighbour, zero fill (the same pixels as torchvision's ``rotate``)."""
    out = torch.empty_like(x)
    for s in range(0, len(x), _ROTATE_CHUNK):
        part = x[s : s + _ROTATE_CHUNK].float()
        rad = degrees[s : s + _ROTATE_CHUNK].double() * (math.pi / 180)
        cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        ).float()
        grid = F.affine_grid(theta, list(part.shape), align_corners=False)
        rotated = F.grid_sample(part, grid, mode="nearest", align_corners=False)
        out[s : s + _ROTATE_CHUNK] = rotated.round().clamp(0, 255).to(torch.uint8)
    return out


def mnist360_stream(train_y: torch.Tensor, seed: int, batch_size: int) -> tuple[np.ndarray, ...]:
    """The stream's (row index into the training set, class, rotation in degrees), in order."""
    rng = np.random.default_rng(seed)
    labels = train_y.numpy()
    chunks: list[list[np.ndarray]] = []
    sizes = []
    for j in range(N_CLASSES):
        rows = np.flatnonzero(labels == j)
        per_chunk = len(rows) // CHUNKS_PER_CLASS + 1
        chunks.append([rows[k * per_chunk : (k + 1) * per_chunk] for k in range(CHUNKS_PER_CLASS)])
        sizes.append(len(rows))
    drawn = [0] * N_CLASSES  # images of each class drawn so far (drives its rotation)
    index, klass, degrees = [], [], []
    pair = [0, 1]
    for _ in range(ROUNDS * N_CLASSES):
        active = [chunks[pair[0]].pop(), chunks[pair[1]].pop()]
        left = [len(active[0]), len(active[1])]
        while left[0] > 0 and left[1] > 0:
            n0 = min(round(left[0] / (left[0] + left[1]) * batch_size), left[0])  # half to even
            n1 = min(batch_size - n0, left[1])
            for side, n in ((0, n0), (1, n1)):
                j = pair[side]
                picks = active[side][rng.integers(0, len(active[side]), size=n)]
                k = drawn[j] + np.arange(n)
                index.extend(picks.tolist())
                klass.extend([j] * n)
                degrees.extend(((j - 1) * 60 + k * 360.0 / sizes[j]) % 360)
                drawn[j] += n
                left[side] -= n
        pair = [(pair[0] + 1) % N_CLASSES, (pair[1] + 1) % N_CLASSES]
    return np.asarray(index), np.asarray(klass), np.asarray(degrees, dtype=np.float64)


@register_source("mnist-360")
def load_mnist360(
    data_dir: Path,
    *,
    seed: int = 0,
    batch_size: int = 16,
    base: str = "mnist",
) -> DataSource:
    """MNIST-360 (see the module docstring); ``batch_size`` shapes the per-batch class mix and
    should equal ``trainer.batch_size``, ``seed`` draws the stream and the test order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            "scenario.source_options.batch_size",
            f"must be a positive integer, got {batch_size!r}",
            "set it to trainer.batch_size, e.g. 16",
        )
    mnist = load_source(base, data_dir)
    index, klass, degrees = mnist360_stream(mnist.train_y, seed, batch_size)
    train_x = rotate_each(mnist.train_x[torch.from_numpy(index)], torch.from_numpy(degrees))
    rng = np.random.default_rng([seed, 360])
    test_rows, test_degrees = [], []
    for j in range(N_CLASSES):
        rows = np.flatnonzero(mnist.test_y.numpy() == j)
        order = rng.permutation(len(rows))
        test_rows.append(rows[order])
        test_degrees.append(np.arange(len(rows)) * 360.0 / len(rows))
    rows = torch.from_numpy(np.concatenate(test_rows))
    test_x = rotate_each(mnist.test_x[rows], torch.from_numpy(np.concatenate(test_degrees)))
    return replace(
        mnist,
        name="mnist-360",
        train_x=train_x,
        train_y=torch.from_numpy(klass).long(),
        test_x=test_x,
        test_y=mnist.test_y[rows],
        class_names=mnist.class_names[:N_CLASSES],
        ordered=True,
    )
