"""A minimal batch iterator over in-memory tensors.

``torch.utils.data.DataLoader`` over a ``TensorDataset`` indexes and collates sample by sample,
which dominates the step time at the batch size of 10 used by online CL benchmarks. This loader
slices whole batches from the uint8 tensors with one shuffled permutation per epoch drawn from
its own generator (checkpointable, independent of global RNG state).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class TensorBatchLoader:
    """Iterates ``{"x", "y", "t"}`` batches of a split; sized, so progress bars know the length."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        task_label: int | torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x
        self.y = y
        if isinstance(task_label, torch.Tensor):
            self.t = task_label.long()
        else:
            self.t = torch.full((len(y),), int(task_label), dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield {"x": self.x[idx], "y": self.y[idx], "t": self.t[idx]}
