"""A minimal batch iterator over in-memory tensors, one epoch per instance.

``torch.utils.data.DataLoader`` over a ``TensorDataset`` indexes and collates sample by sample,
which dominates the step time at the batch size of 10 used by online CL benchmarks. This loader
slices whole batches from the uint8 tensors. Its shuffle is a pure function of ``seed`` (the
runner derives it from the run seed, the experience and the epoch), so a resumed run can rebuild
the exact epoch and skip the batches already trained (``skip_batches``) without saved state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_seed(run_seed: int, experience: int, epoch: int, stream: int = 0) -> int:
    """Seed of one epoch's shuffle; distinct for every (run seed, experience, epoch, stream)."""
    return ((run_seed * 1_000_003 + stream) * 10_007 + experience) * 100_003 + epoch


class PoolOrder:
    """Rows drawn from a pool (auxiliary images, dream samples) in a reshuffled order per pass.

    Position ``p`` of an epoch's order is row ``perm_c[p mod n]`` of pass ``c = p // n``, where
    ``perm_c`` is seeded by :func:`epoch_seed` with stream ``stream + c``: a pure function of
    (run seed, experience, epoch, position), so an exact resume inside an experience draws the
    same rows without saved state. Permutations are cached (a step spans at most two passes).
    """

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self._perms: dict[tuple[int, int, int, int, int], torch.Tensor] = {}

    def clear(self) -> None:
        self._perms.clear()

    def _permutation(
        self, run_seed: int, experience: int, epoch: int, cycle: int, n: int
    ) -> torch.Tensor:
        key = (run_seed, experience, epoch, cycle, n)
        if key not in self._perms:
            seed = epoch_seed(run_seed, experience, epoch, stream=self.stream + cycle)
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[key] = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self._perms[key]

    def indices(
        self, run_seed: int, experience: int, epoch: int, start: int, k: int, n: int
    ) -> torch.Tensor:
        """Rows at positions ``start..start+k-1`` of the epoch's order over ``n`` pool rows."""
        out: list[torch.Tensor] = []
        pos, left = start, k
        while left > 0:
            cycle, offset = divmod(pos, n)
            take = min(left, n - offset)
            perm = self._permutation(run_seed, experience, epoch, cycle, n)
            out.append(perm[offset : offset + take])
            pos, left = pos + take, left - take
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class TensorBatchLoader:
    """Iterates ``{"x", "y", "t"}`` batches of one epoch (sized, for progress bars).

    ``max_batches`` caps the epoch (debug runs); ``skip_batches`` starts inside it (resume).
    With ``head`` (a split with foreign rows, see :class:`~cl_framework.scenarios.Split`)
    batches also carry ``"h"``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        skip_batches: int = 0,
        max_batches: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        steps_per_batch: int = 1,
        head: torch.Tensor | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not len(x) == len(y) == len(t):
            raise ValueError(f"x, y, t have {len(x)}, {len(y)}, {len(t)} rows")
        if head is not None and len(head) != len(y):
            raise ValueError(f"head has {len(head)} rows, y {len(y)}")
        self.x, self.y, self.t = x, y, t.long()
        self.head = head
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.skip_batches = skip_batches
        self.max_batches = max_batches
        self.drop_last = drop_last or world_size > 1  # ranks need equal batches
        self.rank = rank
        self.world_size = world_size
        self.steps_per_batch = max(1, steps_per_batch)

    def total_batches(self) -> int:
        """Batches in a whole epoch (before skipping, after the cap).

        Under DDP one step consumes a global batch of ``batch_size * world_size`` rows of the
        same shuffle, and this rank takes its slice; the ragged last global batch is dropped.
        """
        n = len(self.y)
        step = self.batch_size * self.world_size
        total = n // step if self.drop_last else -(-n // step)
        return total if self.max_batches is None else min(total, self.max_batches)

    def remaining_batches(self) -> int:
        """Mini-batches (optimizer steps) this epoch will still yield."""
        return max(0, self.total_batches() - self.skip_batches)

    def __len__(self) -> int:
        """Items Lightning sees: chunks of up to ``steps_per_batch`` mini-batches."""
        return -(-self.remaining_batches() // self.steps_per_batch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]]:
        if self.steps_per_batch == 1:
            yield from self.batches()
            return
        chunk: list[dict[str, torch.Tensor]] = []
        for batch in self.batches():
            chunk.append(batch)
            if len(chunk) == self.steps_per_batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The epoch's mini-batches one by one (after ``skip_batches``)."""
        for idx in self.batch_indices():
            yield self.labels_of(idx) | {"x": self.x[idx]}

    def labels_of(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The label fields of rows ``idx`` (``y``, ``t`` and, with foreign rows, ``h``)."""
        out = {"y": self.y[idx], "t": self.t[idx]}
        if self.head is not None:
            out["h"] = self.head[idx]
        return out

    def batch_indices(self) -> Iterator[torch.Tensor]:
        """Row indices of each mini-batch this epoch still yields, in order (the shuffle is a
        function of ``seed`` only; disk streaming decodes exactly these rows)."""
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(n)
        step = self.batch_size * self.world_size
        for b in range(self.skip_batches, self.total_batches()):
            start = b * step + self.rank * self.batch_size
            yield order[start : start + self.batch_size]
