"""Gradient-based Sample Selection, greedy variant (GSS; Aljundi et al., NeurIPS 2019), as in
Mammoth's ``gss`` (the code behind the DER paper's Table 2).

Training is ER's: ``batch_num`` steps per stream batch, each on the stream rows joined with a
replay draw of ``minibatch_size`` rows (the first is the engine's step, the others are
:meth:`CLModule.extra_step` calls). The memory is what differs; after the steps, with the
network in eval mode and un-augmented rows:

* ``G``: per-row gradients of the cross-entropy on ``gss_minibatch_size`` random buffer rows;
  ``c = 1 + max_i cos(g_batch, G_i)``, ``g_batch`` the gradient of the stream batch's mean
  loss (``c = 0.1`` while the buffer is empty).
* While the buffer has room, a row takes the next free slot with score ``c``.
* Once it is full, and only if ``c < 1`` (the batch's gradient points away from every sampled
  memory gradient), each row gets its own score ``s = 1 + max_i cos(g_row, G_i)``; a slot
  ``j`` is drawn with probability proportional to the stored scores and replaced with
  probability ``score_j / (score_j + s)``. Redundant memory rows (high score) go first.

The scores live in the shared buffer as field ``gss_score``, so they are checkpointed with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cl_framework.engine.plugin import (
    ROLE_EVAL,
    Batch,
    ForwardOutput,
    StrategyContext,
)
from cl_framework.errors import ConfigError
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import InnerStepsReplayPlugin

#: Mixed with the run seed for the plug-in's own generator (memory subsets, replacements).
_GSS_SALT = 6_007


def gss_score(g: torch.Tensor, memory_grads: torch.Tensor) -> torch.Tensor:
    """``1 + max_i cos(g_r, G_i)`` for each row ``g_r`` of ``g`` (rows x params)."""
    cos = F.cosine_similarity(g.unsqueeze(1), memory_grads.unsqueeze(0), dim=2)
    return cos.max(dim=1).values + 1


@register_strategy
class GSS(InnerStepsReplayPlugin):
    name = "gss"
    fills_buffer = True

    @dataclass
    class Config:
        minibatch_size: int = 10  # replay rows joined with the stream rows per step
        gss_minibatch_size: int = 10  # memory rows whose gradients score the candidates
        batch_num: int = 1  # steps per stream batch, each with a fresh replay draw

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        for key in ("minibatch_size", "gss_minibatch_size", "batch_num"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"strategy.gss.{key}", "must be >= 1", f"set {key}: 10")
        self._generator: torch.Generator | None = None

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        if ctx.buffer is not None and ctx.buffer.policy != "reservoir":
            raise ConfigError(
                "buffer.policy",
                f"'{ctx.buffer.policy}': strategy 'gss' chooses the memory rows itself",
                "set buffer.policy: reservoir (the slots GSS fills before the buffer is full)",
            )

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.run_seed * 1_000_003 + _GSS_SALT)
        return self._generator

    # ------------------------------------------------------------------ training
    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        for draw in self.later_draws():
            self.inner_step(batch, draw)
        n = batch.n_stream
        self.insert(batch.x_raw[:n], batch.y[:n], batch.t[:n])

    # ------------------------------------------------------------------ memory
    def _grads(self, x_raw: torch.Tensor, y: torch.Tensor, per_row: bool) -> torch.Tensor:
        """Gradients of the CE in eval mode: one row per sample, or one for the batch mean."""
        module = self.module
        params = module.trainable_parameters()
        x = module.transform.to_float(x_raw.to(module.device))
        y = y.to(module.device)
        groups = [(x[i : i + 1], y[i : i + 1]) for i in range(len(y))] if per_row else [(x, y)]
        was_training = module.training
        module.eval()
        try:
            rows = []
            with torch.enable_grad():
                for xb, yb in groups:
                    loss = F.cross_entropy(module.run_forward(xb, ROLE_EVAL).logits, yb)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    rows.append(
                        torch.cat(
                            [
                                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                                for g, p in zip(grads, params, strict=True)
                            ]
                        )
                    )
        finally:
            module.train(was_training)
        return torch.stack(rows)

    def insert(self, x_raw: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """Offer stream rows to the memory by the greedy GSS rule (module docstring)."""
        buffer, gen = self.buffer, self.generator
        memory_grads = None
        if buffer.is_empty:
            batch_score = torch.tensor(0.1)
        else:
            k = min(self.cfg.gss_minibatch_size, len(buffer))
            picks = torch.randperm(len(buffer), generator=gen)[:k].to(buffer.device)
            memory = buffer.get(picks, ["x", "y"])
            memory_grads = self._grads(memory["x"], memory["y"], per_row=True)
            batch_score = gss_score(self._grads(x_raw, y, per_row=False), memory_grads)[0]
        device = buffer.device
        room = buffer.capacity - len(buffer)
        if room > 0:
            n = min(room, len(y))
            score = batch_score.to(device).expand(n).float()
            buffer.add(
                x=x_raw[:n].to(device), y=y[:n].to(device), t=t[:n].to(device), gss_score=score
            )
            x_raw, y, t = x_raw[n:], y[n:], t[n:]
        if len(y) == 0 or memory_grads is None or float(batch_score) >= 1:
            return
        row_scores = gss_score(self._grads(x_raw, y, per_row=True), memory_grads)
        scores = buffer.all(["gss_score"])["gss_score"]  # a view: updates show through
        for r in range(len(y)):
            slot = int(torch.multinomial(scores.double() / scores.sum(), 1, generator=gen))
            single = float(row_scores[r])
            stored = float(scores[slot])
            if float(torch.rand((), generator=gen)) < stored / (stored + single):
                buffer.update(
                    torch.tensor([slot], device=device),
                    x=x_raw[r : r + 1].to(device),
                    y=y[r : r + 1].to(device),
                    t=t[r : r + 1].to(device),
                    gss_score=torch.tensor([single], device=device),
                )

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        return {"generator": None if self._generator is None else self._generator.get_state()}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
