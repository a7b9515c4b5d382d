"""Named feature taps: read or replace intermediate maps of a backbone during one forward.

Methods such as TwF (reads the student's and a frozen teacher's stage maps) and SAM/SER
(replaces each stage output by ``ReLU(a * s)``) need the maps *before* the activation that ends
the stem and each stage. Instead of hooks stored on the model or global flags, the caller passes
a :class:`TapContext` to ``forward``; the backbone calls :meth:`Backbone.tap` at each tap point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

TapModifier = Callable[[torch.Tensor], torch.Tensor]
"""Maps the pre-activation at a tap to its replacement (same shape); may hold parameters."""


class TapContext:
    """Per-forward instructions: which taps to record, which to replace.

    Passed explicitly to ``forward`` (no hooks stored on the model, no global state).

    ``record`` is ``True`` (record every tap), ``False`` (none) or an iterable of tap names.
    ``modifiers`` maps tap names to functions (or ``nn.Module``s) returning the replacement
    pre-activation. ``records`` is filled during forward with the (possibly modified) tensors,
    *not* detached, so losses on them backpropagate; a second forward with the same context
    overwrites entries of the same name.
    """

    def __init__(
        self,
        record: bool | Iterable[str] = False,
        modifiers: Mapping[str, TapModifier] | None = None,
    ) -> None:
        if isinstance(record, bool):
            self._record_all = record
            self._record_names: frozenset[str] = frozenset()
        else:
            # A bare string is an Iterable[str] of characters; treat it as one tap name.
            names = (record,) if isinstance(record, str) else tuple(record)
            self._record_all = False
            self._record_names = frozenset(names)
        self.modifiers: dict[str, TapModifier] = dict(modifiers or {})
        self.records: dict[str, torch.Tensor] = {}
        # The tap-name tuple this context was last checked against (identity), so a backbone
        # validates a reused context once rather than at every tap of every forward.
        self._checked_against: tuple[str, ...] | None = None

    def wants(self, name: str) -> bool:
        """Whether the tensor at tap ``name`` should be stored in :attr:`records`."""
        return self._record_all or name in self._record_names

    def requested_names(self) -> set[str]:
        """Every tap name this context mentions explicitly (records and modifiers)."""
        return set(self._record_names) | set(self.modifiers)

    def validate(self, tap_names: tuple[str, ...]) -> None:
        """Raise ``ValueError`` if a requested tap is not one of ``tap_names``.

        Cheap on reuse: remembers the last tuple it was checked against by identity.
        """
        if self._checked_against is tap_names:
            return
        unknown = self.requested_names() - set(tap_names)
        if unknown:
            valid = ", ".join(tap_names) if tap_names else "(this backbone has no taps)"
            raise ValueError(f"unknown tap name(s) {sorted(unknown)}; valid tap names: {valid}")
        self._checked_against = tap_names

    def __repr__(self) -> str:
        record = True if self._record_all else sorted(self._record_names)
        return f"TapContext(record={record!r}, modifiers={sorted(self.modifiers)!r})"


class Backbone(nn.Module):
    """Feature extractor without classifier; the engine owns the output heads.

    Subclasses set ``tap_names`` (in forward order) and ``feature_dim``, implement
    ``forward(x, taps)`` returning pooled ``(B, feature_dim)`` features, and route every tap
    point through :meth:`tap`. Built-in taps sit at *pre-activation* points: the ReLU that ends
    the stem or stage is applied to the value :meth:`tap` returns.
    """

    tap_names: tuple[str, ...] = ()
    feature_dim: int

    def forward(self, x: torch.Tensor, taps: TapContext | None = None) -> torch.Tensor:
        raise NotImplementedError

    def init_head(self, head: nn.Linear) -> None:
        """Initialise the engine's output layer as the reference network initialises its
        classifier (default: PyTorch's ``nn.Linear`` init, as Mammoth's ResNets keep)."""

    def tap(self, name: str, x: torch.Tensor, taps: TapContext | None) -> torch.Tensor:
        """Apply ``taps.modifiers[name]`` if any, record the result if asked, return it.

        A fast no-op when ``taps`` is None, so untapped forwards pay nothing.
        """
        if taps is None:
            return x
        if taps._checked_against is not self.tap_names:
            taps.validate(self.tap_names)
        modifier = taps.modifiers.get(name)
        if modifier is not None:
            x = modifier(x)
        if taps.wants(name):
            taps.records[name] = x
        return x
