"""The one replay buffer of a run, shared by every strategy plug-in.

Storage is a set of named, pre-allocated tensors of shape ``(capacity, *row_shape)`` (inputs,
labels, logits, task ids, masks, ...), created lazily at first sight with the incoming dtype, so
uint8 images stay uint8. Filled slots are always the prefix ``0 .. len(buffer) - 1``. Insertion
and sampling are vectorised over the batch and draw randomness only from the buffer's own
``torch.Generator``, whose state is part of :meth:`ReplayBuffer.state_dict`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cl_framework.buffer.policies import (
    POLICIES,
    bottom_k_per_class,
    last_occurrence,
    reservoir_slots,
    water_fill,
)
from cl_framework.errors import ConfigError

_INDEX = "index"  # reserved: sample() returns the slots under this name
_RANDPERM_MAX = 4096  # above this many filled slots, CPU sampling uses O(n) Floyd's algorithm


def _as_device(device: str | torch.device) -> torch.device:
    """Pin ``cuda`` to a concrete index so generator and storage agree on the device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _new_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class ReplayBuffer:
    """Fixed-capacity replay memory with reservoir or class-balanced selection.

    ``add`` offers a stream batch; the policy decides which rows are kept and where. Reservoir
    (Vitter's algorithm R, as in Mammoth) keeps a uniform subset of the whole stream.
    ``class_balanced`` keeps class counts within one of each other among classes that have seen
    more samples than their share (the rest are kept in full) and, within each class, a uniform
    subset of what that class has seen; it needs the label field in every ``add``.
    """

    def __init__(
        self,
        capacity: int,
        policy: str = "reservoir",
        device: str | torch.device = "cpu",
        seed: int = 0,
        label_field: str = "y",
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ConfigError(
                "buffer.size",
                f"must be a non-negative integer number of samples, got {capacity!r}",
                "set buffer.size to 0 (no replay) or a positive integer such as 500",
            )
        if policy not in POLICIES:
            raise ConfigError(
                "buffer.policy", f"unknown policy {policy!r}", f"use one of: {', '.join(POLICIES)}"
            )
        self.capacity: int = capacity
        self.policy: str = policy
        self.device: torch.device = _as_device(device)
        self.seed: int = int(seed)
        self.label_field: str = label_field
        self.num_seen: int = 0
        self._size = 0
        self._storage: dict[str, torch.Tensor] = {}
        self._generator = _new_generator(self.device, self.seed)
        # class_balanced bookkeeping: per-slot random key and label as offered, per-class count
        # of stream samples seen. The label is copied so that update() of the label field
        # (e.g. a head re-mapping) cannot desynchronise the policy's counts.
        self._slot_key = torch.zeros(0, dtype=torch.float64, device=self.device)
        self._slot_label = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._class_seen = torch.zeros(0, dtype=torch.int64, device=self.device)
        if policy == "class_balanced":
            self._slot_key = torch.zeros(capacity, dtype=torch.float64, device=self.device)
            self._slot_label = torch.zeros(capacity, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        return self._size

    @property
    def is_empty(self) -> bool:
        return self._size == 0

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._storage)

    def __repr__(self) -> str:
        shapes = {k: (tuple(v.shape[1:]), str(v.dtype)) for k, v in self._storage.items()}
        return (
            f"ReplayBuffer(capacity={self.capacity}, policy={self.policy!r}, "
            f"device={self.device}, len={self._size}, num_seen={self.num_seen}, fields={shapes})"
        )

    # ------------------------------------------------------------------ insertion
    def add(self, **fields: torch.Tensor) -> torch.Tensor:
        """Offer a stream batch; return for each row the slot it went to, or -1 if not kept.

        Every field already stored must be given (a partial row would leave stale data behind);
        a new field is allocated zero-filled for the slots filled before it existed.
        """
        batch = self._check_batch(fields, what="add")
        missing = [name for name in self._storage if name not in fields]
        if missing:
            raise ValueError(
                f"ReplayBuffer.add: missing field(s) {missing}; every add must give all stored "
                f"fields {list(self._storage)}"
            )
        if self.policy == "class_balanced" and self.label_field not in fields:
            raise ValueError(
                f"ReplayBuffer.add: the class_balanced policy needs the label field "
                f"'{self.label_field}' in every add"
            )
        values = self._prepare(fields)
        if batch == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        if self.policy == "reservoir" and self.device.type == "cpu":
            slots, kept = self._select_reservoir_cpu(batch)
            if kept:  # once full, most batches keep no row: no copies at all
                rows = torch.tensor([b for b, _ in kept], dtype=torch.int64)
                targets = torch.tensor([j for _, j in kept], dtype=torch.int64)
                self._write_rows(values, rows, targets)
        else:
            if self.policy == "reservoir":
                slots = self._select_reservoir(batch)
            else:
                slots = self._select_class_balanced(values[self.label_field])
            rows = (slots >= 0).nonzero().squeeze(1)
            self._write_rows(values, rows, slots[rows])
        self.num_seen += batch
        return slots

    def _write_rows(
        self, values: Mapping[str, torch.Tensor], rows: torch.Tensor, targets: torch.Tensor
    ) -> None:
        """Copy the kept incoming ``rows`` of every field into their ``targets`` slots."""
        for name, value in values.items():
            self._storage[name].index_copy_(0, targets, value.index_select(0, rows))

    def replace_contents(self, **fields: torch.Tensor) -> None:
        """Hold exactly these rows (slots ``0..n-1``), dropping every other one.

        For plug-ins that manage the memory themselves (``StrategyPlugin.fills_buffer``), e.g.
        iCaRL's herding, which shrinks old classes and adds the new ones' exemplars at once.
        Reservoir policy only; ``num_seen`` is left as it is.
        """
        if self.policy != "reservoir":
            raise ValueError("ReplayBuffer.replace_contents needs the reservoir policy")
        n = self._check_batch(fields, what="replace_contents")
        if n > self.capacity:
            raise ValueError(f"ReplayBuffer.replace_contents: {n} rows > capacity {self.capacity}")
        missing = [name for name in self._storage if name not in fields]
        if missing:
            raise ValueError(f"ReplayBuffer.replace_contents: missing field(s) {missing}")
        for name, value in self._prepare(fields).items():
            self._storage[name][:n] = value
        self._size = n

    def _select_reservoir(self, batch: int) -> torch.Tensor:
        uniforms = torch.rand(
            batch, generator=self._generator, dtype=torch.float64, device=self.device
        )
        self._size = min(self.num_seen + batch, self.capacity)
        return reservoir_slots(self.num_seen, self.capacity, uniforms)

    def _select_reservoir_cpu(self, batch: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """:meth:`_select_reservoir`'s decisions from the same draws, in scalar Python (~10x
        fewer op calls on CPU); also returns the kept ``(row, slot)`` pairs in row order."""
        uniforms = torch.rand(batch, generator=self._generator, dtype=torch.float64).tolist()
        self._size = min(self.num_seen + batch, self.capacity)
        row_of_slot: dict[int, int] = {}
        capacity, seen = self.capacity, self.num_seen
        for b, u in enumerate(uniforms):
            n = seen + b
            j = n if n < capacity else min(int(u * (n + 1)), n)
            if j < capacity:
                row_of_slot[j] = b  # a later row overwrites an earlier one
        slots = [-1] * batch
        for j, b in row_of_slot.items():
            slots[b] = j
        kept = [(b, j) for b, j in enumerate(slots) if j >= 0]
        return torch.tensor(slots, dtype=torch.int64), kept

    def _select_class_balanced(self, labels: torch.Tensor) -> torch.Tensor:
        """Keep per class the ``k_c`` smallest uniform keys among stored and incoming rows.

        Works on O(capacity + batch) label/key metadata; only kept incoming rows are written.
        """
        labels = labels.to(torch.int64)
        batch = labels.numel()
        keys = torch.rand(batch, generator=self._generator, dtype=torch.float64, device=self.device)
        num_classes = max(int(labels.max()) + 1, self._class_seen.numel())
        if num_classes > self._class_seen.numel():
            grown = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
            grown[: self._class_seen.numel()] = self._class_seen
            self._class_seen = grown
        size = self._size
        held = torch.bincount(self._slot_label[:size], minlength=num_classes)
        self._class_seen += torch.bincount(labels, minlength=num_classes)
        quota = water_fill(self._class_seen, self.capacity, held)

        keep = bottom_k_per_class(
            torch.cat([self._slot_label[:size], labels]),
            torch.cat([self._slot_key[:size], keys]),
            quota,
        )
        freed = (~keep[:size]).nonzero().squeeze(1)
        new_rows = keep[size:].nonzero().squeeze(1)
        grow = new_rows.numel() - freed.numel()
        if grow < 0:  # cannot happen: sum(quota) = min(seen, capacity) never shrinks
            raise RuntimeError("class_balanced: more evictions than insertions")
        targets = torch.cat(
            [freed, torch.arange(size, size + grow, dtype=torch.int64, device=self.device)]
        )
        slots = torch.full((batch,), -1, dtype=torch.int64, device=self.device)
        slots[new_rows] = targets
        self._slot_label[targets] = labels[new_rows]
        self._slot_key[targets] = keys[new_rows]
        self._size = size + grow
        return slots

    # ------------------------------------------------------------------ access
    def sample(
        self,
        n: int,
        fields: Sequence[str] | None = None,
        exclude_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Draw ``min(n, eligible)`` filled slots uniformly without replacement.

        ``exclude_labels`` drops slots whose label field holds one of those labels (e.g. the
        current task's classes for ER-ACE). The result includes the slots under ``"index"``.
        """
        if n < 0:
            raise ValueError(f"ReplayBuffer.sample: n must be >= 0, got {n}")
        names = self._field_names(fields)
        if exclude_labels is None:
            count = min(n, self._size)
            if self.device.type == "cpu" and self._size > _RANDPERM_MAX:
                index = self._floyd_sample(self._size, count)
            else:
                index = torch.randperm(self._size, generator=self._generator, device=self.device)
                index = index[:count]
        else:
            if self.label_field not in self._storage:
                raise ValueError(
                    f"ReplayBuffer.sample: exclude_labels needs the label field "
                    f"'{self.label_field}', which is not stored"
                )
            labels = self._storage[self.label_field][: self._size]
            excluded = torch.as_tensor(exclude_labels, device=self.device).to(labels.dtype)
            eligible = (~torch.isin(labels, excluded)).nonzero().squeeze(1)
            count = min(n, eligible.numel())
            perm = torch.randperm(eligible.numel(), generator=self._generator, device=self.device)
            index = eligible[perm[:count]]
        out = {name: self._storage[name].index_select(0, index) for name in names}
        out[_INDEX] = index
        return out

    def _floyd_sample(self, size: int, count: int) -> torch.Tensor:
        """``count`` distinct slots of ``range(size)``, uniform, in O(count) (Floyd's algorithm)."""
        uniforms = torch.rand(count, generator=self._generator, dtype=torch.float64).tolist()
        chosen: dict[int, None] = {}
        for u, j in zip(uniforms, range(size - count, size), strict=True):
            t = min(int(u * (j + 1)), j)
            chosen[j if t in chosen else t] = None
        return torch.tensor(list(chosen), dtype=torch.int64)

    def get(
        self, index: torch.Tensor, fields: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Rows at the given filled slots (e.g. to refresh logits of sampled entries)."""
        names = self._field_names(fields)
        index = self._check_index(index, "get")
        return {name: self._storage[name][index] for name in names}

    def update(self, index: torch.Tensor, **fields: torch.Tensor) -> None:
        """Overwrite fields at filled slots; a field not stored yet is allocated zero-filled.

        If a slot repeats, the last row wins, as sequential writes would. Rewriting the label
        field does not change the class_balanced bookkeeping, which counts labels as offered.
        """
        if not fields:
            raise ValueError("ReplayBuffer.update: give at least one field to write")
        index = self._check_index(index, "update")
        batch = self._check_batch(fields, what="update")
        if batch != index.numel():
            raise ValueError(
                f"ReplayBuffer.update: {index.numel()} slots but fields have {batch} rows"
            )
        values = self._prepare(fields)
        rows = last_occurrence(index).nonzero().squeeze(1)
        for name, value in values.items():
            self._storage[name][index[rows]] = value[rows]

    def all(self, fields: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Every filled slot, as views into the storage (clone to keep them past later adds)."""
        names = self._field_names(fields)
        return {name: self._storage[name][: self._size] for name in names}

    # ------------------------------------------------------------------ device and state
    def to(self, device: str | torch.device) -> ReplayBuffer:
        """Move storage and generator in place; returns ``self``.

        Generator states do not carry across device types, so the new generator is seeded by a
        draw from the old one: deterministic, but a different stream than staying put.
        """
        device = _as_device(device)
        if device == self.device:
            return self
        new_seed = int(torch.randint(0, 2**62, (1,), generator=self._generator, device=self.device))
        self._storage = {k: v.to(device) for k, v in self._storage.items()}
        self._slot_key = self._slot_key.to(device)
        self._slot_label = self._slot_label.to(device)
        self._class_seen = self._class_seen.to(device)
        self._generator = _new_generator(device, new_seed)
        self.device = device
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, ints and strings only (loads with ``torch.load(weights_only=True)``).

        Only filled rows are saved (cloned, so that a saved slice does not drag the whole
        pre-allocated storage into the checkpoint).
        """
        size = self._size
        return {
            "capacity": self.capacity,
            "policy": self.policy,
            "label_field": self.label_field,
            "seed": self.seed,
            "num_seen": self.num_seen,
            "size": size,
            "fields": {name: t[:size].clone() for name, t in self._storage.items()},
            "generator_state": self._generator.get_state(),
            "generator_device": self.device.type,
            "slot_key": self._slot_key[:size].clone(),
            "slot_label": self._slot_label[:size].clone(),
            "class_seen": self._class_seen.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore contents, counters and generator; capacity and policy must match."""
        for key in ("capacity", "policy", "label_field"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"ReplayBuffer.load_state_dict: checkpoint has {key}={state[key]!r}, this "
                    f"buffer has {getattr(self, key)!r}; build the buffer with the saved {key}"
                )
        size = int(state["size"])
        storage: dict[str, torch.Tensor] = {}
        for name, rows in state["fields"].items():
            tensor = torch.zeros(
                (self.capacity, *rows.shape[1:]), dtype=rows.dtype, device=self.device
            )
            tensor[:size] = rows.to(self.device)
            storage[name] = tensor
        self._storage = storage
        self._size = size
        self.num_seen = int(state["num_seen"])
        self.seed = int(state["seed"])
        if self.policy == "class_balanced":
            self._slot_key = torch.zeros(self.capacity, dtype=torch.float64, device=self.device)
            self._slot_label = torch.zeros(self.capacity, dtype=torch.int64, device=self.device)
            self._slot_key[:size] = state["slot_key"].to(self.device)
            self._slot_label[:size] = state["slot_label"].to(self.device)
        self._class_seen = state["class_seen"].to(self.device, torch.int64)
        gen_state = state["generator_state"]
        if state["generator_device"] == self.device.type:
            self._generator.set_state(gen_state.cpu())
        else:
            digest = hashlib.sha256(gen_state.cpu().numpy().tobytes()).digest()
            self._generator = _new_generator(self.device, int.from_bytes(digest[:7], "little"))
            warnings.warn(
                f"ReplayBuffer: generator state saved on {state['generator_device']} cannot be "
                f"restored on {self.device.type}; reseeded deterministically from it",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ helpers
    def _field_names(self, fields: Sequence[str] | None) -> list[str]:
        if fields is None:
            return list(self._storage)
        if isinstance(fields, str):
            fields = [fields]
        unknown = [name for name in fields if name not in self._storage]
        if unknown:
            raise KeyError(
                f"ReplayBuffer: unknown field(s) {unknown}; stored: {list(self._storage)}"
            )
        return list(fields)

    def _check_index(self, index: torch.Tensor, what: str) -> torch.Tensor:
        index = torch.as_tensor(index, device=self.device)
        if index.dtype == torch.bool or index.dtype.is_floating_point or index.dtype.is_complex:
            raise ValueError(f"ReplayBuffer.{what}: index must hold integer slots")
        index = index.to(torch.int64).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self._size):
            raise IndexError(
                f"ReplayBuffer.{what}: slots must lie in [0, {self._size}) (filled slots)"
            )
        return index

    def _check_batch(self, fields: Mapping[str, torch.Tensor], what: str) -> int:
        """Validate names, tensor-ness, equal batch sizes and row shape/dtype against storage."""
        if not fields:
            raise ValueError(f"ReplayBuffer.{what}: give at least one field")
        sizes = {}
        for name, value in fields.items():
            if name == _INDEX:
                raise ValueError(f"ReplayBuffer.{what}: field name '{_INDEX}' is reserved")
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                raise ValueError(
                    f"ReplayBuffer.{what}: field '{name}' must be a tensor with a batch dimension"
                )
            sizes[name] = value.shape[0]
            stored = self._storage.get(name)
            if stored is not None and (
                value.shape[1:] != stored.shape[1:] or value.dtype != stored.dtype
            ):
                raise ValueError(
                    f"ReplayBuffer.{what}: field '{name}' has rows {tuple(value.shape[1:])} "
                    f"{value.dtype}, storage holds {tuple(stored.shape[1:])} {stored.dtype}"
                )
        if len(set(sizes.values())) > 1:
            raise ValueError(f"ReplayBuffer.{what}: fields differ in batch size: {sizes}")
        if what == "add" and self.label_field in fields:
            labels = fields[self.label_field]
            if self.policy == "class_balanced" and (
                labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool
            ):
                raise ValueError(
                    f"ReplayBuffer.add: label field '{self.label_field}' must be a 1-D integer "
                    f"tensor for the class_balanced policy"
                )
            if self.policy == "class_balanced" and labels.numel() and int(labels.min()) < 0:
                raise ValueError(
                    f"ReplayBuffer.add: label field '{self.label_field}' has negative labels"
                )
        return next(iter(sizes.values()))

    def _prepare(self, fields: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Allocate unseen fields (zero-filled) and return detached values on the device."""
        values = {}
        for name, value in fields.items():
            if name not in self._storage:
                self._storage[name] = torch.zeros(
                    (self.capacity, *value.shape[1:]), dtype=value.dtype, device=self.device
                )
            if value.requires_grad:
                value = value.detach()
            values[name] = value if value.device == self.device else value.to(self.device)
        return values
