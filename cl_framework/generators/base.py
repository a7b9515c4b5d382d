"""The frozen conditional generator that Dream2Learn dreams through.

A generator maps a **soft prompt** (a continuous conditioning tensor of shape
:attr:`ConditionalGenerator.prompt_shape`) and a **seed** to images, differentiably with respect
to the prompt. Its own weights are frozen: only prompts are optimised. Two backends exist:

* ``tiny_diffusion`` (:mod:`cl_framework.generators.tiny_diffusion`): our small class-conditional
  diffusion model, trained once by ``clf-pretrain-generator``; its class-embedding space is the
  soft-prompt space. Runs offline on a CPU.
* ``diffusers`` (:mod:`cl_framework.generators.diffusers_backend`): a latent diffusion model of the
  Stable Diffusion family; the soft prompt is a sequence of prompt token embeddings.

Same prompt + same seed -> the same images (the noise comes from a private ``torch.Generator``),
which is what lets Dream2Learn keep an inventory of prompts instead of images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ConditionalGenerator(nn.Module, ABC):
    """A frozen generator: ``(prompt, seed, n) -> n images``, float in [0, 1], NCHW.

    Subclasses implement :meth:`prompt_shape`, :meth:`init_prompt` and :meth:`_generate`;
    :meth:`generate` adds the resize / channel conversion to the classifier's input shape.
    """

    #: Backend name (``strategy.d2l.generator.backend``).
    backend: str = ""

    def freeze(self) -> ConditionalGenerator:
        """Put every weight out of the optimiser's reach (``requires_grad=False``, eval mode)."""
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> ConditionalGenerator:
        """Always stays in eval mode: the generator is frozen (dropout / norm stats fixed)."""
        return super().train(False)

    @property
    @abstractmethod
    def prompt_shape(self) -> tuple[int, ...]:
        """Shape of one soft prompt (e.g. ``(64,)`` or ``(n_tokens, 768)``)."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the generator produces natively."""

    @property
    def n_classes(self) -> int:
        """Classes whose embedding can initialise a prompt (0 if none)."""
        return 0

    @abstractmethod
    def init_prompt(self, source_class: int | None, generator: torch.Generator) -> torch.Tensor:
        """A starting prompt: the embedding of ``source_class`` or, if None, a random one."""

    @abstractmethod
    def _generate(
        self,
        prompt: torch.Tensor,
        n: int,
        seed: int,
        init_images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``n`` images for one ``prompt`` (native shape, float in [0, 1])."""

    def generate(
        self,
        prompt: torch.Tensor,
        n: int,
        seed: int,
        out_shape: tuple[int, int, int] | None = None,
        init_images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``n`` images of ``prompt``, float in [0, 1], shaped ``out_shape`` (C, H, W) if given.

        Differentiable with respect to ``prompt`` (when it requires grad). ``seed`` fixes the
        noise, so the same prompt and seed give the same images. ``init_images`` (float in
        [0, 1], any size): optional image-to-image start, for backends that support it.
        """
        if tuple(prompt.shape) != tuple(self.prompt_shape):
            raise ValueError(
                f"prompt of shape {tuple(prompt.shape)}, the generator expects {self.prompt_shape}"
            )
        images = self._generate(prompt, n, seed, init_images)
        return match_shape(images, out_shape) if out_shape is not None else images

    def describe(self) -> dict[str, Any]:
        """What the run log and metrics record about the generator."""
        return {
            "backend": self.backend,
            "prompt_shape": list(self.prompt_shape),
            "image_shape": list(self.image_shape),
        }


def match_shape(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Differentiable resize (bilinear, antialiased) and channel conversion to ``(C, H, W)``.

    3 -> 1 channels uses ITU-R 601 luma weights, 1 -> 3 repeats the channel.
    """
    c, h, w = shape
    if tuple(images.shape[-2:]) != (h, w):
        images = F.interpolate(
            images, size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )
    have = images.shape[1]
    if have != c:
        if have == 3 and c == 1:
            weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images * weights).sum(1, keepdim=True)
        elif have == 1 and c == 3:
            images = images.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"cannot convert {have}-channel images to {c} channels")
    return images.clamp(0.0, 1.0)


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Standard-normal noise from a private CPU generator (identical on every device)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen).to(device)
