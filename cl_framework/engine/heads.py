"""The head manager: which output unit ("head") stands for which dataset class.

By default the mapping is the identity over the benchmark's classes. Strategies that bind free
heads to auxiliary or dream classes (auxiliary stream, WSCL, Dream2Learn) re-map incoming classes
to heads through :meth:`HeadManager.assign`. Evaluation maps dataset labels through the manager,
so class-IL argmax runs over every head and task-IL masks to the experience's heads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


class HeadManager:
    """Owns the label -> head mapping of a run (part of the checkpointed state)."""

    def __init__(self, n_classes: int, n_extra_heads: int = 0) -> None:
        if n_classes <= 0:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        if n_extra_heads < 0:
            raise ValueError(f"n_extra_heads must be >= 0, got {n_extra_heads}")
        self.n_classes = n_classes
        self.n_heads = n_classes + n_extra_heads
        self._label_to_head = torch.arange(n_classes)

    @property
    def label_to_head(self) -> torch.Tensor:
        """(n_classes,) int64: head index of each dataset label (CPU)."""
        return self._label_to_head

    def map(self, labels: torch.Tensor) -> torch.Tensor:
        """Head indices for dataset labels (same device as ``labels``)."""
        table = self._label_to_head
        if table.device != labels.device:
            table = table.to(labels.device)
            self._label_to_head = table
        return table[labels]

    def heads_of(self, labels: Iterable[int]) -> torch.Tensor:
        """Head indices of a set of dataset labels (e.g. an experience's classes)."""
        idx = torch.as_tensor(list(labels), dtype=torch.long)
        return self._label_to_head.cpu()[idx]

    def assign(self, labels: Iterable[int], heads: Iterable[int]) -> None:
        """Bind dataset labels to heads (each head serves at most one label)."""
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        heads_t = torch.as_tensor(list(heads), dtype=torch.long)
        if labels_t.shape != heads_t.shape:
            raise ValueError("assign() needs one head per label")
        if bool(((heads_t < 0) | (heads_t >= self.n_heads)).any()):
            raise ValueError(f"head index out of range 0..{self.n_heads - 1}")
        table = self._label_to_head.cpu().clone()
        table[labels_t] = heads_t
        if table.unique().numel() != table.numel():
            raise ValueError("two dataset labels would share one head")
        self._label_to_head = table

    def task_mask(self, experiences_classes: list[tuple[int, ...]]) -> torch.Tensor:
        """(n_experiences, n_heads) bool: the heads of each experience (for task-IL masking)."""
        mask = torch.zeros(len(experiences_classes), self.n_heads, dtype=torch.bool)
        for i, classes in enumerate(experiences_classes):
            mask[i, self.heads_of(classes)] = True
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_classes": self.n_classes,
            "n_heads": self.n_heads,
            "label_to_head": self._label_to_head.cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["n_heads"]) != self.n_heads or int(state["n_classes"]) != self.n_classes:
            raise ValueError(
                f"head state has {state['n_classes']} classes / {state['n_heads']} heads, "
                f"this run has {self.n_classes} / {self.n_heads}"
            )
        self._label_to_head = state["label_to_head"].clone().long()
