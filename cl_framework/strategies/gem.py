"""GEM (Lopez-Paz & Ranzato, NeurIPS 2017), as in Mammoth's ``gem`` (DER paper, Table 2).

Each step computes one gradient per finished experience on all of its memory rows (the
episodic memory of :mod:`cl_framework.strategies.episodic`). If the stream gradient ``g``
conflicts with any of them, it is replaced by the closest vector (in L2) that does not: GEM's
dual QP over the memory gradients ``G`` (rows), as Mammoth solves it with ``quadprog``:

    min_v  1/2 v^T (G G^T + eps I) v + (G g)^T v   s.t.  v >= margin,    g~ = G^T v + g.

We solve that small (experiences x experiences) QP exactly with scipy's non-negative least
squares after the substitution ``u = v - margin`` and a Cholesky factorisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

from cl_framework.strategies.episodic import EpisodicMemoryPlugin, flat_grad, set_flat_grad
from cl_framework.strategies.registry import register_strategy


def gem_project(
    g: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 1e-3
) -> torch.Tensor:
    """GEM's projected gradient for stream gradient ``g`` (p,) and memory gradients (t, p)."""
    G = memories.detach().double().cpu().numpy()
    gv = g.detach().double().cpu().numpy()
    P = G @ G.T
    P = 0.5 * (P + P.T) + eps * np.eye(len(G))
    c = G @ gv
    m = np.full(len(G), float(margin))
    # 1/2 u^T P u + (P m + c)^T u over u >= 0  ==  1/2 ||L^T u - b||^2 with P = L L^T,
    # L b = -(P m + c)
    L = np.linalg.cholesky(P)
    b = np.linalg.solve(L, -(P @ m + c))
    u, _ = nnls(L.T, b)
    v = u + m
    return torch.from_numpy(G.T @ v + gv).to(g.dtype).to(g.device)


@register_strategy
class GEM(EpisodicMemoryPlugin):
    name = "gem"

    @dataclass
    class Config:
        gamma: float = 0.5  # margin of the dual QP (Mammoth's --gamma)
        eps: float = 1e-3  # ridge added to G G^T (Mammoth's value)

    def before_optimizer_step(self) -> None:
        if self.buffer.is_empty:
            return
        params = self.module.trainable_parameters()
        g = flat_grad(params)
        memory = self.buffer.all(["x", "y", "t"])
        rows = [
            self.replay_gradient(params, memory["x"][sel], memory["y"][sel], memory["t"][sel])
            for task in memory["t"].unique().tolist()
            for sel in [memory["t"] == task]
        ]
        G = torch.stack(rows)
        if bool((G @ g < 0).any()):
            g = gem_project(g, G, margin=self.cfg.gamma, eps=self.cfg.eps)
        set_flat_grad(params, g)
