"""The prompt inventory: Dream2Learn keeps optimised prompts, not images.

Published [D2L reviews]: "an inventory of prompts is kept rather than images". Each
:class:`DreamClass` holds what regenerates its samples exactly: the prompt, the seed, and (for
image-to-image dreams) the start images. Samples for an experience come from
:meth:`PromptInventory.regenerate` with a seed derived from (dream seed, experience), so a
resumed run, or any later reader of a checkpoint, regenerates bit-identical images.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cl_framework.generators import ConditionalGenerator


@dataclass
class DreamClass:
    """One dreamed class: its prompt, how it was made, and its head while alive."""

    dream_id: int
    prompt: torch.Tensor
    seed: int
    head: int
    source_class: int | None
    born: int  # experience after which it was dreamed
    steps: int = 0
    stop: str = ""
    init_images: torch.Tensor | None = None  # uint8 start images (image-to-image), or None
    stats: dict[str, float] = field(default_factory=dict)
    refreshed: int = 0

    def state(self) -> dict[str, Any]:
        return {
            "dream_id": self.dream_id,
            "prompt": self.prompt.detach().cpu().clone(),
            "seed": self.seed,
            "head": self.head,
            "source_class": -1 if self.source_class is None else self.source_class,
            "born": self.born,
            "steps": self.steps,
            "stop": self.stop,
            "init_images": self.init_images,
            "stats": dict(self.stats),
            "refreshed": self.refreshed,
        }

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> DreamClass:
        source = int(s["source_class"])
        return cls(
            dream_id=int(s["dream_id"]),
            prompt=s["prompt"].clone(),
            seed=int(s["seed"]),
            head=int(s["head"]),
            source_class=None if source < 0 else source,
            born=int(s["born"]),
            steps=int(s["steps"]),
            stop=str(s["stop"]),
            init_images=s.get("init_images"),
            stats={k: float(v) for k, v in dict(s.get("stats") or {}).items()},
            refreshed=int(s.get("refreshed", 0)),
        )


def sample_seed(dream_seed: int, experience: int) -> int:
    """Noise seed of a dream class's samples for one experience (fresh per experience)."""
    return (dream_seed * 1_000_003 + 7_919 * (experience + 1)) % (2**63 - 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images -> uint8 (what the data pipeline and the pool hold)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class PromptInventory:
    """The living dream classes (by id) and the ids retired so far."""

    def __init__(self) -> None:
        self.entries: dict[int, DreamClass] = {}
        self.retired: list[dict[str, Any]] = []
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DreamClass]:
        return iter(sorted(self.entries.values(), key=lambda d: d.dream_id))

    def add(self, dream: DreamClass) -> DreamClass:
        if dream.dream_id in self.entries:
            raise ValueError(f"dream class {dream.dream_id} is already in the inventory")
        self.entries[dream.dream_id] = dream
        self.next_id = max(self.next_id, dream.dream_id + 1)
        return dream

    def new_id(self) -> int:
        return self.next_id

    def retire(self, dream_id: int, reason: str, experience: int) -> DreamClass:
        dream = self.entries.pop(dream_id)
        self.retired.append(
            {
                "dream_id": dream_id,
                "head": dream.head,
                "reason": reason,
                "experience": experience,
                "born": dream.born,
            }
        )
        return dream

    @torch.no_grad()
    def regenerate(
        self,
        generator: ConditionalGenerator,
        dream: DreamClass,
        n: int,
        seed: int,
        out_shape: tuple[int, int, int],
        chunk: int = 256,
    ) -> torch.Tensor:
        """``n`` uint8 images of ``dream`` for noise ``seed`` (identical for identical input)."""
        device = next(iter(generator.parameters())).device
        prompt = dream.prompt.to(device)
        init = dream.init_images.to(device).float() / 255 if dream.init_images is not None else None
        parts = []
        for k, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            images = generator.generate(prompt, m, seed + k, out_shape, init)
            parts.append(to_uint8(images).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, *out_shape, dtype=torch.uint8)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "entries": [d.state() for d in self],
            "retired": list(self.retired),
            "next_id": self.next_id,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.entries = {}
        for s in state.get("entries", []):
            self.add(DreamClass.from_state(s))
        self.retired = [dict(r) for r in state.get("retired", [])]
        self.next_id = int(state.get("next_id", 0))
