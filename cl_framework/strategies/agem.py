"""A-GEM (Chaudhry et al., ICLR 2019), as in Mammoth's ``agem`` (DER paper, Table 2).

After the stream backward, a reference gradient ``g_ref`` is computed on ``minibatch_size`` rows
drawn from the episodic memory (a random sample of every finished experience, see
:mod:`cl_framework.strategies.episodic`). If the stream gradient ``g`` conflicts with it
(``g . g_ref < 0``) the step uses ``g - (g . g_ref / g_ref . g_ref) g_ref``, whose dot product
with ``g_ref`` is zero; otherwise ``g`` is used unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_framework.scenarios import Experience
from cl_framework.strategies.episodic import EpisodicMemoryPlugin, flat_grad, set_flat_grad
from cl_framework.strategies.registry import register_strategy


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's update direction: ``g`` projected so that it does not increase the memory loss
    to first order (non-negative dot product with ``g_ref``)."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - (dot / torch.dot(g_ref, g_ref)) * g_ref


@register_strategy
class AGEM(EpisodicMemoryPlugin):
    name = "agem"

    @dataclass
    class Config:
        minibatch_size: int = 128  # memory rows of the reference gradient (Mammoth best args)

    def before_optimizer_step(self) -> None:
        if self.buffer.is_empty:
            return
        params = self.module.trainable_parameters()
        g = flat_grad(params)
        memory = self.buffer.sample(self.cfg.minibatch_size, fields=["x", "y", "t"])
        g_ref = self.replay_gradient(params, memory["x"], memory["y"], memory["t"])
        set_flat_grad(params, agem_project(g, g_ref))


@register_strategy
class AGEMReservoir(AGEM):
    """A-GEM-R, Mammoth's ``agem_r`` (DER paper): A-GEM's projection with the reference gradient
    drawn from the shared reservoir buffer, which the stream fills as it goes (no task
    boundaries needed: the DER paper runs it on MNIST-360)."""

    name = "agem_r"
    fills_buffer = False

    def after_experience(self, experience: Experience) -> None:
        """The reservoir is filled step by step; nothing to store at the experience's end."""
