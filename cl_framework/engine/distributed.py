"""Multi-process (DDP) helpers: ranks, row gathering, count reduction.

Buffer semantics under DDP (``buffer.distributed``):

* ``replicated``: every rank gathers the whole global stream batch before the buffer insert
  and runs the same policy with the same generator, so all ranks hold the identical buffer
  (and draw identical replay batches). Memory budget = ``buffer.size`` per rank.
* ``sharded``: each rank inserts only its own rows into a buffer of ``size // world_size``
  slots with its own generator; the union of the shards is the memory (budget ``size``).

Control flow is identical on every rank (same seeds, same buffer emptiness), which DDP needs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

DISTRIBUTED_MODES = ("replicated", "sharded")


def world_size_from_config(strategy: str, devices: int, num_nodes: int) -> int:
    """Processes the run will use (known before any Trainer exists)."""
    if str(strategy).startswith("ddp"):
        return int(devices) * int(num_nodes)
    return 1


def global_rank(devices: int) -> int:
    """This process's rank, from the launcher's environment (0 in the launching process)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * int(devices) + local


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped per-rank tensors along dim 0, in rank order."""
    if not initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
