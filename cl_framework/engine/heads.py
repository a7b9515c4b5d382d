"""The head manager: which output unit ("head") stands for which class.

The output layer has one head per class of the whole benchmark plus optional extra heads that
plug-ins ask for (:meth:`StrategyPlugin.extra_heads`). Every head is either

* **assigned** to a dataset label (a real class of the benchmark), or
* **free**; a free head may be **bound** to a class of some other label space, owned by a
  plug-in: an auxiliary dataset's class (auxiliary stream), a dream class (WSCL, Dream2Learn).

By default every dataset label is assigned to its own index (the identity), so strategies that
never touch the manager see ordinary positional heads. Strategies that re-map incoming classes
call :meth:`HeadManager.release` once (every head becomes free), bind their own classes to free
heads (:meth:`HeadManager.bind_classes`) and assign each experience's classes when it arrives
(:meth:`HeadManager.assign_in_order`, :meth:`HeadManager.assign_most_activated`,
:meth:`HeadManager.assign_random` or plain :meth:`HeadManager.assign`). Assigning a label to a
head ends the head's binding. A label not assigned yet maps to its positional head (its own index)
so that future experiences can still be evaluated (the random-init baseline of the reference code
uses positional heads too); such provisional heads may coincide with assigned ones.

Evaluation maps dataset labels through the manager, so class-IL argmax runs over every head (a
prediction on a free / bound head is an error) and task-IL masks to the experience's heads.
The manager's whole state is in :meth:`HeadManager.state_dict`, saved in every checkpoint.
See ``docs/heads.md`` for the API and an example plug-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cl_framework.engine.module import CLModule

_STATE_VERSION = 2
_NO_CLASS = -1


def greedy_assignment(counts: torch.Tensor) -> list[int]:
    """The "most-activated" assignment of rows (classes) to columns (heads) of a count matrix.

    ``counts[c, h]`` is how often images of class ``c`` were predicted as head ``h``; a negative
    entry marks an unavailable head (the reference code puts -1 in every non-free column).
    Repeatedly take the largest entry ``(c, h)``, give class ``c`` head ``h``, then remove row
    ``c`` and column ``h``. Ties are broken in row-major order, exactly like the reference
    code: the lowest class row first, then the lowest head index.

    Returns the head of every row. Raises ``ValueError`` when there are more rows than
    available columns (a column is available if any of its entries is >= 0).
    """
    if counts.ndim != 2:
        raise ValueError(
            f"counts must be a (classes, heads) matrix, got shape {tuple(counts.shape)}"
        )
    n_rows = counts.shape[0]
    work = counts.detach().to("cpu", torch.int64).clone()
    available = int((work >= 0).any(0).sum())
    if n_rows > available:
        raise ValueError(
            f"cannot assign {n_rows} classes to {available} free heads: every class needs its "
            "own head (add extra heads, e.g. strategy.auxiliary.add_aux_classes)"
        )
    taken = torch.iinfo(torch.int64).min  # below every "unavailable" marker
    result = [-1] * n_rows
    for _ in range(n_rows):
        flat = int(work.argmax())  # torch.argmax returns the first maximum: row-major tie-break
        row, col = divmod(flat, work.shape[1])
        if int(work[row, col]) < 0:
            raise ValueError(
                f"class row {row} has no available head left (its entries are all negative)"
            )
        result[row] = col
        work[row, :] = taken
        work[:, col] = taken
    return result


@torch.no_grad()
def predict_heads(module: CLModule, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Argmax head of each raw (uint8) image under ``module`` in eval mode, on the CPU.

    The training mode of the module is restored afterwards. Used for the most-activated rule.
    """
    was_training = module.training
    module.eval()
    out: list[torch.Tensor] = []
    try:
        for start in range(0, len(x), batch_size):
            part = x[start : start + batch_size].to(module.device, non_blocking=True)
            out.append(module.predict_logits(part).argmax(1).cpu())
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class HeadManager:
    """Owns the label -> head mapping of a run, free heads and their bindings (checkpointed)."""

    def __init__(self, n_classes: int, n_extra_heads: int = 0) -> None:
        if n_classes <= 0:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        if n_extra_heads < 0:
            raise ValueError(f"n_extra_heads must be >= 0, got {n_extra_heads}")
        self.n_classes = n_classes
        self.n_heads = n_classes + n_extra_heads
        self._label_to_head = torch.arange(n_classes)
        self._assigned = torch.ones(n_classes, dtype=torch.bool)
        self._bound_class = torch.full((self.n_heads,), _NO_CLASS, dtype=torch.long)
        self._bound_owner: list[str] = [""] * self.n_heads

    # --------------------------------------------------------------- mapping
    @property
    def label_to_head(self) -> torch.Tensor:
        """(n_classes,) int64: head index of each dataset label (CPU)."""
        return self._label_to_head.cpu()

    @property
    def assigned(self) -> torch.Tensor:
        """(n_classes,) bool: which dataset labels are assigned to a head (a copy)."""
        return self._assigned.clone()

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

    def task_mask(self, experiences_classes: list[tuple[int, ...]]) -> torch.Tensor:
        """(n_experiences, n_heads) bool: the heads of each experience (for task-IL masking)."""
        mask = torch.zeros(len(experiences_classes), self.n_heads, dtype=torch.bool)
        for i, classes in enumerate(experiences_classes):
            mask[i, self.heads_of(classes)] = True
        return mask

    # ---------------------------------------------------------- free heads
    def free_heads(self) -> torch.Tensor:
        """Heads no assigned label uses, ascending (bound or not)."""
        used = torch.zeros(self.n_heads, dtype=torch.bool)
        used[self._label_to_head.cpu()[self._assigned]] = True
        return (~used).nonzero().squeeze(1)

    def is_free(self, head: int) -> bool:
        return bool((self.free_heads() == int(head)).any())

    def release(self, labels: Iterable[int] | None = None) -> None:
        """Un-assign dataset labels (default: every label); their heads become free.

        A released label maps to its positional head (its own index) until it is assigned again.
        """
        idx = (
            torch.arange(self.n_classes)
            if labels is None
            else torch.as_tensor(list(labels), dtype=torch.long)
        )
        self._check_labels(idx)
        table = self._label_to_head.cpu().clone()
        table[idx] = idx
        assigned = self._assigned.clone()
        assigned[idx] = False
        self._label_to_head, self._assigned = table, assigned

    def assign(self, labels: Iterable[int], heads: Iterable[int]) -> None:
        """Assign dataset labels to heads (each head serves at most one assigned label).

        A head that was bound to another plug-in's class loses that binding.
        """
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        heads_t = torch.as_tensor(list(heads), dtype=torch.long)
        if labels_t.shape != heads_t.shape:
            raise ValueError("assign() needs one head per label")
        self._check_labels(labels_t)
        self._check_heads(heads_t)
        if heads_t.unique().numel() != heads_t.numel():
            raise ValueError("two dataset labels would share one head")
        table = self._label_to_head.cpu().clone()
        assigned = self._assigned.clone()
        table[labels_t] = heads_t
        assigned[labels_t] = True
        used = table[assigned]
        if used.unique().numel() != used.numel():
            raise ValueError("two dataset labels would share one head")
        self._label_to_head, self._assigned = table, assigned
        self._bound_class[heads_t] = _NO_CLASS
        for h in heads_t.tolist():
            self._bound_owner[h] = ""

    def assign_in_order(self, labels: Sequence[int]) -> torch.Tensor:
        """Assign ``labels`` to the lowest free heads, in order; returns their heads."""
        free = self.free_heads()
        self._check_enough(len(labels), len(free))
        heads = free[: len(labels)]
        self.assign(labels, heads.tolist())
        return heads

    def assign_random(self, labels: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Assign ``labels`` to distinct free heads drawn uniformly with ``generator``."""
        free = self.free_heads()
        self._check_enough(len(labels), len(free))
        heads = free[torch.randperm(len(free), generator=generator)[: len(labels)]]
        self.assign(labels, heads.tolist())
        return heads

    def activation_counts(
        self, labels: Sequence[int], targets: torch.Tensor, predictions: torch.Tensor
    ) -> torch.Tensor:
        """(len(labels), n_heads) count matrix of the most-activated rule.

        Entry ``[i, h]`` counts the samples with dataset label ``labels[i]`` (``targets``) whose
        argmax head (``predictions``) is ``h``, for free heads ``h``; other columns are -1.
        """
        targets = targets.cpu().long()
        predictions = predictions.cpu().long()
        if targets.shape != predictions.shape:
            raise ValueError("targets and predictions need the same shape")
        counts = torch.full((len(labels), self.n_heads), -1, dtype=torch.long)
        free = self.free_heads()
        for i, label in enumerate(labels):
            hits = torch.bincount(predictions[targets == int(label)], minlength=self.n_heads)
            counts[i, free] = hits[: self.n_heads][free]
        return counts

    def assign_most_activated(
        self, labels: Sequence[int], targets: torch.Tensor, predictions: torch.Tensor
    ) -> torch.Tensor:
        """Assign ``labels`` to free heads by :func:`greedy_assignment` of the count matrix.

        ``targets``: dataset labels of the incoming experience's training images;
        ``predictions``: the current model's argmax head for each of them (eval mode, see
        :func:`predict_heads`). Raises ``ValueError`` when there are more labels than free heads.
        """
        self._check_enough(len(labels), len(self.free_heads()))
        counts = self.activation_counts(labels, targets, predictions)
        heads = torch.as_tensor(greedy_assignment(counts), dtype=torch.long)
        self.assign(labels, heads.tolist())
        return heads

    # ------------------------------------------------------------- bindings
    def bind(self, owner: str, heads: Sequence[int], classes: Sequence[int]) -> None:
        """Bind ``classes`` (in ``owner``'s own label space) to free ``heads``, one each.

        A head can be re-bound by the same owner; heads assigned to dataset labels or bound by
        another owner raise ``ValueError``.
        """
        if not owner:
            raise ValueError("bind() needs a non-empty owner name")
        heads_t = torch.as_tensor(list(heads), dtype=torch.long)
        classes_t = torch.as_tensor(list(classes), dtype=torch.long)
        if heads_t.shape != classes_t.shape:
            raise ValueError("bind() needs one class per head")
        self._check_heads(heads_t)
        if heads_t.unique().numel() != heads_t.numel():
            raise ValueError("bind() got the same head twice")
        if bool((classes_t < 0).any()):
            raise ValueError("bound classes must be >= 0")
        free = set(self.free_heads().tolist())
        for h in heads_t.tolist():
            if h not in free:
                raise ValueError(f"head {h} is assigned to a dataset label, it cannot be bound")
            if self._bound_owner[h] not in ("", owner):
                raise ValueError(f"head {h} is bound by '{self._bound_owner[h]}'")
        bound_class = self._bound_class.clone()
        bound_class[heads_t] = classes_t
        owners = list(self._bound_owner)
        for h in heads_t.tolist():
            owners[h] = owner
        mine = bound_class[[o == owner for o in owners]]
        if mine.unique().numel() != mine.numel():
            raise ValueError(f"a class of '{owner}' would be bound to two heads")
        self._bound_class, self._bound_owner = bound_class, owners

    def bind_classes(
        self,
        owner: str,
        n_classes: int,
        generator: torch.Generator | None = None,
        heads: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Bind classes ``0..n_classes-1`` of ``owner`` to free heads (default: every free head).

        With exactly as many classes as heads they are bound in order (class k -> k-th head);
        with more, distinct classes are drawn at random with ``generator`` (required then), as
        the reference code does. Fewer classes than heads raise ``ValueError`` (pass ``heads``
        to bind a subset). Returns the class bound to each head, in head order.
        """
        targets = self.free_heads() if heads is None else torch.as_tensor(list(heads))
        if n_classes < len(targets):
            raise ValueError(
                f"'{owner}' has {n_classes} classes but {len(targets)} heads are to be bound"
            )
        if n_classes == len(targets):
            classes = torch.arange(n_classes)
        else:
            if generator is None:
                raise ValueError("bind_classes() needs a generator to draw classes at random")
            classes = torch.randperm(n_classes, generator=generator)[: len(targets)]
        self.bind(owner, targets.tolist(), classes.tolist())
        return classes

    def unbind(self, owner: str, heads: Sequence[int] | None = None) -> None:
        """Remove ``owner``'s bindings (on ``heads`` only, if given)."""
        chosen = range(self.n_heads) if heads is None else [int(h) for h in heads]
        for h in chosen:
            if self._bound_owner[h] == owner:
                self._bound_owner[h] = ""
                self._bound_class[h] = _NO_CLASS

    def bindings(self, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(heads, classes)``: the free heads bound by ``owner`` and their classes, by head."""
        heads = [h for h in range(self.n_heads) if self._bound_owner[h] == owner]
        heads_t = torch.as_tensor(heads, dtype=torch.long)
        return heads_t, self._bound_class[heads_t].clone()

    def class_to_head(self, owner: str, n_classes: int) -> torch.Tensor:
        """(n_classes,) lookup table: the head bound to each of ``owner``'s classes, or -1."""
        table = torch.full((n_classes,), -1, dtype=torch.long)
        heads, classes = self.bindings(owner)
        inside = classes < n_classes
        table[classes[inside]] = heads[inside]
        return table

    def summary(self) -> list[str]:
        """One line per head: ``"head 3: label 5"``, ``"head 7: free, auxiliary class 2"``."""
        table = self._label_to_head.cpu()
        lines = []
        for h in range(self.n_heads):
            real = ((table == h) & self._assigned).nonzero().squeeze(1).tolist()
            if real:
                lines.append(f"head {h}: label {real[0]}")
            elif self._bound_owner[h]:
                owner, cls = self._bound_owner[h], int(self._bound_class[h])
                lines.append(f"head {h}: free, {owner} class {cls}")
            else:
                lines.append(f"head {h}: free")
        return lines

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "n_classes": self.n_classes,
            "n_heads": self.n_heads,
            "label_to_head": self._label_to_head.cpu().clone(),
            "assigned": self._assigned.clone(),
            "bound_class": self._bound_class.clone(),
            "bound_owner": list(self._bound_owner),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["n_heads"]) != self.n_heads or int(state["n_classes"]) != self.n_classes:
            raise ValueError(
                f"head state has {state['n_classes']} classes / {state['n_heads']} heads, "
                f"this run has {self.n_classes} / {self.n_heads}"
            )
        self._label_to_head = state["label_to_head"].clone().long().cpu()
        if "assigned" in state:  # version 2
            self._assigned = state["assigned"].clone().bool().cpu()
            self._bound_class = state["bound_class"].clone().long().cpu()
            self._bound_owner = [str(o) for o in state["bound_owner"]]
        else:  # version 1: every label assigned, nothing bound
            self._assigned = torch.ones(self.n_classes, dtype=torch.bool)
            self._bound_class = torch.full((self.n_heads,), _NO_CLASS, dtype=torch.long)
            self._bound_owner = [""] * self.n_heads

    # -------------------------------------------------------------- checks
    def _check_labels(self, labels: torch.Tensor) -> None:
        if bool(((labels < 0) | (labels >= self.n_classes)).any()):
            raise ValueError(f"dataset label out of range 0..{self.n_classes - 1}")

    def _check_heads(self, heads: torch.Tensor) -> None:
        if bool(((heads < 0) | (heads >= self.n_heads)).any()):
            raise ValueError(f"head index out of range 0..{self.n_heads - 1}")

    @staticmethod
    def _check_enough(n_labels: int, n_free: int) -> None:
        if n_labels > n_free:
            raise ValueError(
                f"cannot assign {n_labels} classes to {n_free} free heads: every class needs its "
                "own head (add extra heads, e.g. strategy.auxiliary.add_aux_classes)"
            )
