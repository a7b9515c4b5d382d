"""Shared base of the rehearsal strategies: drawing augmented rows from the replay buffer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cl_framework.engine.plugin import ROLE_EVAL, ROLE_STREAM, Batch, StrategyPlugin


class RehearsalPlugin(StrategyPlugin):
    """A plug-in that replays from the run's one shared buffer.

    The engine offers every stream row to the buffer once per step (with the fields that the
    plug-ins' ``buffer_fields`` add); rehearsal plug-ins only draw from it. Inputs are stored
    un-augmented and are augmented at draw time, as in Mammoth.
    """

    uses_buffer = True

    def draw(self, n: int, fields: Sequence[str] = ("x", "y")) -> dict[str, torch.Tensor] | None:
        """``n`` rows sampled without replacement (``x`` augmented), or None if empty."""
        if self.buffer.is_empty or n <= 0:
            return None
        sample = self.buffer.sample(n, fields=list(fields))
        if "x" in sample:
            sample["x"] = self.module.transform.train(sample["x"])
        return sample

    @torch.no_grad()
    def memory_logits(self, x_raw: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The head's eval-mode logits for raw rows, in chunks of ``batch_size``: what a
        plug-in that fills the buffer itself stores with them (FDR, X-DER). No evaluation-time
        hooks (``eval_forward`` / ``eval_logits``): these are the network's own outputs."""
        module = self.module
        was_training = module.training
        module.eval()
        try:
            parts = [
                module.run_forward(
                    module.transform.to_float(x_raw[s : s + batch_size].to(module.device)),
                    ROLE_EVAL,
                ).logits
                for s in range(0, len(x_raw), batch_size)
            ]
        finally:
            module.train(was_training)
        return torch.cat(parts)


class InnerStepsReplayPlugin(RehearsalPlugin):
    """Replay over ``cfg.batch_num`` optimizer steps per stream batch (MER, GSS).

    ``batch_num`` draws of ``cfg.minibatch_size`` rows are taken up front, before the engine's
    step: the first is appended to the stream rows of that step, each other one is trained on
    with the stream rows by :meth:`inner_step` (an ``extra_step``) from ``after_train_step``.
    """

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg)
        self._later: list[dict[str, torch.Tensor] | None] = []

    def prepare_batch(self, batch: Batch) -> Batch:
        size = self.cfg.minibatch_size
        draws = [self.draw(size, ("x", "y", "t")) for _ in range(self.cfg.batch_num)]
        self._later = draws[1:]
        first = draws[0]
        return batch if first is None else batch.append(first["x"], first["y"], first["t"])

    def later_draws(self) -> list[dict[str, torch.Tensor] | None]:
        """The draws of this step's inner steps after the first (each used once)."""
        later, self._later = self._later, []
        return later

    def inner_step(self, batch: Batch, draw: dict[str, torch.Tensor] | None) -> None:
        """One optimizer step on the cross-entropy of the stream rows joined with ``draw``."""
        module, n = self.module, batch.n_stream
        x, y, t = batch.x[:n], batch.y[:n], batch.t[:n]
        if draw is not None:
            x, y, t = (torch.cat([v, draw[k]]) for k, v in (("x", x), ("y", y), ("t", t)))
        inner = Batch(x=x, y=y, t=t, x_raw=batch.x_raw, n_stream=n)
        module.extra_step(module.classification_loss(inner, module.run_forward(x, ROLE_STREAM)))
