"""One dream: optimise a soft prompt through the frozen generator with a classifier-driven loss.

Published [D2L]: the prompt is optimised by the classifier itself so that the generated samples
form a novel class, coherent with what the classifier knows but none of the seen classes; an
oracle on the classifier's features stops the optimisation. The exact loss is not public; ours
(every weight is a key of ``strategy.d2l.objective``) is, for the samples ``x = G(p, noise)``:

* ``assign``: cross-entropy of ``x`` towards the dream class's head (the samples belong to it);
* ``real``: ``-log(1 - P(seen real classes | x))`` (low probability on every real class);
* ``separation``: ``mean_j relu(cos(mu_d, mu_j) - margin)`` over the other dream classes'
  feature prototypes ``mu_j`` (dream classes stay apart in feature space);
* ``drift``: ``mean((p - p0)^2)`` (the prompt stays near its start: a coherent image).

Only the prompt receives gradient (``torch.autograd.grad`` with respect to the prompt alone):
neither the classifier nor the generator is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cl_framework.engine.module import CLModule
from cl_framework.engine.plugin import ROLE_EVAL
from cl_framework.generators import ConditionalGenerator
from cl_framework.strategies.d2l.oracle import (
    ACCEPT,
    BUDGET,
    COLLAPSE,
    CONTINUE,
    DreamStats,
    Oracle,
    dream_stats,
    prototype,
)


@dataclass
class DreamObjective:
    """Weights of the prompt objective (``strategy.d2l.objective``)."""

    assign: float = 1.0
    real: float = 1.0
    separation: float = 4.0
    separation_margin: float = 0.5
    drift: float = 0.1


@dataclass
class PromptSearch:
    """Budget of one prompt optimisation (``strategy.d2l.search``)."""

    lr: float = 0.2
    max_steps: int = 15
    refresh_steps: int = 5
    samples_per_step: int = 16


@dataclass
class DreamResult:
    """The optimised prompt, why it stopped, its last statistics and the per-step trace."""

    prompt: torch.Tensor
    steps: int
    stop: str
    stats: DreamStats | None
    trace: list[dict[str, Any]] = field(default_factory=list)


def classify(module: CLModule, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, features)`` of float [0, 1] images (normalised like the data)."""
    out = module.run_forward(module.transform.to_float(images), ROLE_EVAL)
    return out.logits, out.features


def dream_loss(
    logits: torch.Tensor,
    features: torch.Tensor,
    head: int,
    seen_heads: torch.Tensor,
    other_prototypes: torch.Tensor,
    prompt: torch.Tensor,
    start: torch.Tensor,
    w: DreamObjective,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted objective and its parts (floats, for the trace); cosines around ``center``."""
    target = torch.full((len(logits),), head, dtype=torch.long, device=logits.device)
    parts = {"assign": F.cross_entropy(logits, target)}
    if len(seen_heads):
        p_real = logits.softmax(1)[:, seen_heads.to(logits.device)].sum(1)
        parts["real"] = -torch.log1p(-p_real.clamp(max=1 - 1e-6)).mean()
    if len(other_prototypes):
        cos = other_prototypes.to(features) @ prototype(features, center)
        parts["separation"] = F.relu(cos - w.separation_margin).mean()
    parts["drift"] = (prompt - start.to(prompt)).pow(2).mean()
    weights = {
        "assign": w.assign,
        "real": w.real,
        "separation": w.separation,
        "drift": w.drift,
    }
    total = sum(weights[k] * v for k, v in parts.items())
    return total, {k: round(float(v.detach()), 5) for k, v in parts.items()}


def optimise_prompt(
    module: CLModule,
    generator: ConditionalGenerator,
    start: torch.Tensor,
    head: int,
    seen_heads: torch.Tensor,
    seen_prototypes: torch.Tensor,
    other_prototypes: torch.Tensor,
    oracle: Oracle,
    objective: DreamObjective,
    search: PromptSearch,
    max_steps: int,
    seed: int,
    out_shape: tuple[int, int, int],
    init_images: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
) -> DreamResult:
    """Adam on the prompt; after every evaluation the oracle decides (see :class:`Oracle`).

    Step ``k`` (1-based) draws its own noise (``seed + k``) so the prompt holds over noise
    draws. ``accept`` and ``budget`` keep the evaluated prompt; ``collapse`` keeps the one
    before it. The classifier runs in eval mode; its training mode is restored afterwards.
    Prototypes (``seen_prototypes``, ``other_prototypes``) must be centred on ``center``.
    """
    device = module.device
    init = init_images.to(device).float() / 255 if init_images is not None else None
    prompt = start.detach().clone().to(device).requires_grad_(True)
    anchor = start.detach().to(device)
    optimizer = torch.optim.Adam([prompt], lr=search.lr)
    previous = prompt.detach().clone()
    trace: list[dict[str, Any]] = []
    was_training = module.training
    module.eval()
    stats: DreamStats | None = None
    decision, step = BUDGET, 0
    try:
        for step in range(1, max_steps + 1):
            images = generator.generate(
                prompt, search.samples_per_step, seed + step, out_shape, init
            )
            logits, features = classify(module, images)
            loss, parts = dream_loss(
                logits,
                features,
                head,
                seen_heads,
                other_prototypes,
                prompt,
                anchor,
                objective,
                center,
            )
            stats = dream_stats(
                features,
                logits,
                head,
                seen_heads,
                seen_prototypes,
                other_prototypes,
                step / max(max_steps, 1),
                center,
            )
            decision = oracle.decide(stats, step, max_steps)
            trace.append(
                {"step": step, "loss": parts, "stats": stats.as_dict(), "oracle": decision}
            )
            if decision == COLLAPSE:
                prompt = previous.requires_grad_(False)
                break
            if decision != CONTINUE:
                break
            (grad,) = torch.autograd.grad(loss, prompt)
            previous = prompt.detach().clone()
            prompt.grad = grad
            optimizer.step()
            prompt.grad = None
    finally:
        module.train(was_training)
    if decision == CONTINUE:  # max_steps == 0
        decision = BUDGET
    return DreamResult(
        prompt=prompt.detach().clone(), steps=step, stop=decision, stats=stats, trace=trace
    )


__all__ = [
    "ACCEPT",
    "BUDGET",
    "COLLAPSE",
    "CONTINUE",
    "DreamObjective",
    "DreamResult",
    "PromptSearch",
    "classify",
    "dream_loss",
    "optimise_prompt",
]
