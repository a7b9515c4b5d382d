"""Vectorised slot selection for the replay buffer's policies.

Pure functions on small index/label tensors, kept apart from the storage so that they can be
checked against the sequential algorithms they replace (Mammoth loops over samples in Python).
"""

from __future__ import annotations

import torch

POLICIES: tuple[str, ...] = ("reservoir", "class_balanced")


def last_occurrence(slots: torch.Tensor) -> torch.Tensor:
    """Mask of rows that are the last row writing their slot (``-1`` rows are never kept).

    Sequential writes let a later row overwrite an earlier one; keeping the last occurrence makes
    one vectorised scatter equal to that loop. Cost O(B log B) in the batch size only.
    """
    keep = slots >= 0
    if slots.numel() < 2:
        return keep
    # A stable sort keeps equal slots in row order, so the last of each run is the latest row.
    sorted_slots, order = torch.sort(slots, stable=True)
    is_last = torch.ones_like(sorted_slots, dtype=torch.bool)
    is_last[:-1] = sorted_slots[:-1] != sorted_slots[1:]
    last = torch.empty_like(is_last)
    last[order] = is_last
    return keep & last


def reservoir_slots(num_seen: int, capacity: int, uniforms: torch.Tensor) -> torch.Tensor:
    """Target slot of each offered row under Vitter's algorithm R, ``-1`` if not kept.

    Row ``b`` is stream sample ``n = num_seen + b``. While ``n < capacity`` it takes slot ``n``;
    afterwards ``j = floor(u_b * (n + 1))`` is uniform on ``{0..n}`` and the row replaces slot
    ``j`` if ``j < capacity``. Rows that a later row of the same batch overwrites get ``-1``, so
    the result equals running the sequential algorithm row by row on the same draws.
    """
    n = torch.arange(uniforms.numel(), device=uniforms.device, dtype=torch.int64) + num_seen
    j = torch.floor(uniforms.to(torch.float64) * (n + 1).to(torch.float64)).to(torch.int64)
    j = torch.minimum(j, n)  # guards u == 1.0 - eps rounding up to n + 1
    slots = torch.where(n < capacity, n, j)
    slots = torch.where(slots < capacity, slots, torch.full_like(slots, -1))
    return torch.where(last_occurrence(slots), slots, torch.full_like(slots, -1))


def water_fill(seen: torch.Tensor, capacity: int, held: torch.Tensor) -> torch.Tensor:
    """Per-class slot quotas ``k_c``: as equal as possible, never more than a class has seen.

    ``k_c = min(n_c, L)`` for the largest level ``L`` with ``sum_c min(n_c, L) <= capacity``; the
    ``r`` slots left over go, one each, to classes with ``n_c > L``. Tie-break (deterministic):
    classes currently holding the most slots (``held``) first, then the smaller label. Preferring
    current holders means a class never has to grow back to a quota it was cut below, which keeps
    each class's content exactly the bottom-``k_c`` keys of everything it has seen.
    """
    seen = seen.to(torch.int64)
    total = int(seen.sum())
    if total <= capacity:
        return seen.clone()
    # sum_c min(n_c, L) <= prefix_i + (K - i) * L for every i (sorted counts), with equality on
    # the segment s_{i-1} <= L <= s_i, so the largest feasible L is max_i of each bound's root.
    s, _ = torch.sort(seen)
    k = s.numel()
    prefix = torch.zeros(k, dtype=torch.int64, device=seen.device)
    prefix[1:] = torch.cumsum(s, 0)[:-1]
    remaining = torch.arange(k, 0, -1, device=seen.device, dtype=torch.int64)
    level = int(torch.div(capacity - prefix, remaining, rounding_mode="floor").max())
    quota = torch.clamp(seen, max=level)
    leftover = capacity - int(quota.sum())
    if leftover > 0:
        candidate = seen > level
        big = torch.iinfo(torch.int64).max
        # Stable argsort on -held (non-candidates last) breaks ties by label order.
        priority = torch.where(candidate, -held.to(torch.int64), torch.full_like(seen, big))
        chosen = torch.argsort(priority, stable=True)[:leftover]
        quota[chosen] += 1
    return quota


def bottom_k_per_class(
    labels: torch.Tensor, keys: torch.Tensor, quota: torch.Tensor
) -> torch.Tensor:
    """Mask of the ``quota[c]`` entries with the smallest keys within each class ``c``.

    With i.i.d. uniform keys, the bottom-k of a class is a uniform random k-subset of it.
    """
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=labels.device)
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    sorted_labels = labels[order]
    counts = torch.bincount(labels, minlength=quota.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel(), device=labels.device) - starts[sorted_labels]
    keep = torch.empty_like(sorted_labels, dtype=torch.bool)
    keep[order] = rank < quota[sorted_labels]
    return keep
