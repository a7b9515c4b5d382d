"""Saliency machinery of SAM / SER: the saliency branch, modulation, KL loss and target maps.

The strategy plug-in itself is :mod:`cl_framework.strategies.sam`; ``sources`` registers the
``derived`` data source (resized, per-class-capped sources for quick experiments).
"""

from cl_framework.saliency.branch import SaliencyBranch, UnisalDecoder
from cl_framework.saliency.loss import kl_saliency, normalise_to_sum_one
from cl_framework.saliency.modulation import MODES, build_modulation
from cl_framework.saliency.targets import SaliencyTable, image_keys, spectral_residual_maps

__all__ = [
    "MODES",
    "SaliencyBranch",
    "SaliencyTable",
    "UnisalDecoder",
    "build_modulation",
    "image_keys",
    "kl_saliency",
    "normalise_to_sum_one",
    "spectral_residual_maps",
]
