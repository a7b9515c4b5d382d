"""Episodic memory for the gradient-projection methods (GEM, A-GEM): a per-experience sample.

GEM (Lopez-Paz & Ranzato, 2017) and A-GEM (Chaudhry et al., 2019) keep, for every finished
experience, ``buffer.size // n_experiences`` of its training samples; Mammoth's
implementations (used for the DER paper's Table 2) draw them uniformly at random from the
experience's un-augmented training set at the experience's end. The plug-ins here fill the
shared buffer that way (``fills_buffer``), so it is not a reservoir over the stream.

Also here: the flat-gradient helpers both methods project with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cl_framework.engine.plugin import ROLE_REPLAY, Batch
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience
from cl_framework.strategies.rehearsal import RehearsalPlugin

#: Mixed with the run seed and the experience index for the per-experience memory draw.
_MEMORY_SALT = 7_103


def flat_grad(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """All gradients as one vector (zeros where a parameter has none)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def set_flat_grad(params: Sequence[nn.Parameter], vector: torch.Tensor) -> None:
    """Write a flat gradient vector back into ``p.grad`` (the inverse of :func:`flat_grad`)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset : offset + n].view_as(p).clone()
        offset += n


class EpisodicMemoryPlugin(RehearsalPlugin):
    """Base of GEM / A-GEM: fills the buffer with a random sample of each finished experience."""

    fills_buffer = True
    needs_in_memory_data = True

    def setup(self, ctx) -> None:  # type: ignore[override]
        super().setup(ctx)
        if ctx.buffer is not None and ctx.buffer.capacity < ctx.scenario.n_experiences:
            raise ConfigError(
                "buffer.size",
                f"{ctx.buffer.capacity} is smaller than the {ctx.scenario.n_experiences} "
                f"experiences: strategy '{self.name}' keeps buffer.size // n_experiences "
                "samples of each",
                f"set buffer.size >= {ctx.scenario.n_experiences}",
            )

    def per_experience(self) -> int:
        return self.buffer.capacity // self.ctx.scenario.n_experiences

    def after_experience(self, experience: Experience) -> None:
        split = experience.train
        n = min(self.per_experience(), split.n_own)
        generator = torch.Generator().manual_seed(
            (self.run_seed * 1_000_003 + experience.index) * 31 + _MEMORY_SALT
        )
        own = torch.arange(len(split)) if split.head is None else (split.head < 0).nonzero()[:, 0]
        rows = own[torch.randperm(len(own), generator=generator)[:n]]
        device = self.buffer.device
        y = self.module.heads.map(split.y[rows].to(self.module.device)).to(device)
        t = split.task_labels(experience.task_label)[rows].to(device)
        self.buffer.add(x=split.x[rows].to(device), y=y, t=t)

    def replay_gradient(
        self, params: Sequence[nn.Parameter], x_raw: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Flat gradient of the engine's classification loss on (augmented) memory rows.

        Overwrites ``p.grad``; the caller restores or replaces it."""
        module = self.module
        for p in params:
            p.grad = None
        x = module.transform.train(x_raw.to(module.device))
        batch = Batch(x=x, y=y.to(module.device), t=t.to(module.device), x_raw=x_raw, n_stream=0)
        with torch.enable_grad():
            out = module.run_forward(x, ROLE_REPLAY)
            module.classification_loss(batch, out).backward()
        return flat_grad(params)
