"""Backbones: feature extractors with named taps, built by name from the config.

Importing this package registers the built-ins ``mlp``, ``resnet18`` and ``reduced_resnet18``;
``timm:<model>`` builds any timm model (timm is imported only then).
"""

from __future__ import annotations

from .mlp import MLP
from .registry import (
    BackboneFactory,
    available_backbones,
    build_backbone,
    register_backbone,
)
from .resnet import BasicBlock, CifarResNet, reduced_resnet18, resnet18
from .taps import Backbone, TapContext, TapModifier
from .timm_backbone import TimmBackbone

__all__ = [
    "MLP",
    "Backbone",
    "BackboneFactory",
    "BasicBlock",
    "CifarResNet",
    "TapContext",
    "TapModifier",
    "TimmBackbone",
    "available_backbones",
    "build_backbone",
    "reduced_resnet18",
    "register_backbone",
    "resnet18",
]
