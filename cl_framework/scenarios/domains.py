"""Domain-IL: the same classes under a different input distribution in every experience.

A :class:`DomainShift` maps the base images (uint8) to domain k's images, deterministically in
``(seed, k)``: domain k never depends on how many domains are built. Two shifts are built in:

- :class:`PixelPermutation` (Permuted MNIST): one fixed random permutation of the pixel
  positions per domain, the same for every channel;
- :class:`Rotation` (Rotated MNIST): one fixed rotation angle per domain, drawn uniformly from
  ``[min_degrees, max_degrees)`` (or given as a list), bilinear, counter-clockwise, zero fill.

The sources ``perm-mnist`` and ``rot-mnist`` are a base source (MNIST by default) plus such a
shift; ``build_scenario(setting="domain-il")`` applies the shift to whole uint8 tensors at build
time, once per experience (see :func:`cl_framework.scenarios.scenario.build_scenario`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.sources import DataSource, load_source, register_source

_CHUNK = 16384  # images rotated per call, to bound the float working memory


def domain_seed(seed: int, domain: int) -> int:
    """An independent 63-bit seed for each (seed, domain) pair."""
    return int(
        np.random.SeedSequence([int(seed), int(domain)]).generate_state(2, np.uint64)[0] >> 1
    )


class DomainShift(ABC):
    """Maps base-domain uint8 images (N, C, H, W) to those of domain ``k`` (same shape, uint8)."""

    kind: str = "shift"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("scenario.source_options.seed", f"must be an integer, got {seed!r}")
        self.seed = seed

    @abstractmethod
    def apply(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        """Domain ``domain``'s version of ``x``."""

    @abstractmethod
    def describe(self, domain: int) -> str:
        """A short human-readable description of domain ``domain`` (for logs and docs)."""


class PixelPermutation(DomainShift):
    """A fixed random permutation of the H*W pixel positions per domain."""

    kind = "permutation"

    def permutation(self, domain: int, n_pixels: int) -> torch.Tensor:
        """The permutation of domain ``domain``: output pixel i is input pixel ``perm[i]``."""
        generator = torch.Generator().manual_seed(domain_seed(self.seed, domain))
        return torch.randperm(n_pixels, generator=generator)

    def apply(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        n, c, h, w = x.shape
        perm = self.permutation(domain, h * w).to(x.device)
        return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)

    def describe(self, domain: int) -> str:
        return f"pixel permutation #{domain} (seed {self.seed})"


class Rotation(DomainShift):
    """A fixed rotation per domain: ``angles[k]`` if given, else uniform in [min, max)."""

    kind = "rotation"

    def __init__(
        self,
        seed: int = 0,
        min_degrees: float = 0.0,
        max_degrees: float = 180.0,
        angles: Sequence[float] | None = None,
    ) -> None:
        super().__init__(seed)
        if not float(min_degrees) <= float(max_degrees):
            raise ConfigError(
                "scenario.source_options.min_degrees",
                f"min_degrees {min_degrees} is above max_degrees {max_degrees}",
            )
        self.min_degrees = float(min_degrees)
        self.max_degrees = float(max_degrees)
        self.angles = None if angles is None else [float(a) for a in angles]

    def angle(self, domain: int) -> float:
        if self.angles is not None:
            if not 0 <= domain < len(self.angles):
                raise ConfigError(
                    "scenario.source_options.angles",
                    f"lists {len(self.angles)} angles, experience {domain} needs one",
                    fix="give one angle per experience, or drop 'angles' for random angles",
                )
            return self.angles[domain]
        rng = np.random.default_rng(domain_seed(self.seed, domain))
        return float(rng.uniform(self.min_degrees, self.max_degrees))

    def apply(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return rotate_uint8(x, self.angle(domain))

    def describe(self, domain: int) -> str:
        return f"rotation by {self.angle(domain):.1f} degrees"


def rotate_uint8(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a uint8 batch counter-clockwise about the image centre (bilinear, zero fill)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    if degrees % 360 == 0:
        return x.clone()
    out = torch.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        part = x[start : start + _CHUNK]
        out[start : start + _CHUNK] = tvf.rotate(
            part, float(degrees), interpolation=InterpolationMode.BILINEAR
        )
    return out


def _with_shift(
    data_dir: Path, base: str, base_options: Any, name: str, shift: DomainShift
) -> DataSource:
    if base_options is not None and not isinstance(base_options, dict):
        raise ConfigError(
            "scenario.source_options.base_options",
            f"must be a mapping of the base source's options, got {base_options!r}",
        )
    source = load_source(base, data_dir, **dict(base_options or {}))
    return replace(source, name=name, domain_shift=shift)


@register_source("perm-mnist")
def load_perm_mnist(
    data_dir: Path,
    *,
    seed: int = 0,
    base: str = "mnist",
    base_options: dict[str, Any] | None = None,
) -> DataSource:
    """Permuted MNIST: ``base`` (MNIST) with one seeded pixel permutation per experience."""
    return _with_shift(data_dir, base, base_options, "perm-mnist", PixelPermutation(seed))


@register_source("rot-mnist")
def load_rot_mnist(
    data_dir: Path,
    *,
    seed: int = 0,
    min_degrees: float = 0.0,
    max_degrees: float = 180.0,
    angles: list[float] | None = None,
    base: str = "mnist",
    base_options: dict[str, Any] | None = None,
) -> DataSource:
    """Rotated MNIST: ``base`` (MNIST) with one fixed rotation angle per experience."""
    shift = Rotation(seed, min_degrees=min_degrees, max_degrees=max_degrees, angles=angles)
    return _with_shift(data_dir, base, base_options, "rot-mnist", shift)
