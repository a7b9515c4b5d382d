"""Any timm model as a :class:`Backbone` (config name ``timm:<model>``).

Taps ``stage0``..``stageK`` follow timm's ``feature_info`` order (for ResNets: stem activation,
then layer1..layer4). Unlike the built-ins, these taps are the stage outputs *as timm defines
them*, usually post-activation; a modifier's return value replaces that module output.

timm modules cannot take a TapContext argument, so forward hooks are registered once at
construction; they consult the context of the forward currently running, which is stored on the
instance only for the duration of ``forward`` and cleared in ``finally``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cl_framework.errors import ConfigError

from .taps import Backbone, TapContext

log = logging.getLogger(__name__)

# Wrapper keys under which checkpoints commonly nest the actual state dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


class _TapHook:
    """Forward hook routing one timm module's output through ``owner.tap``.

    A small object rather than a closure so that ``copy.deepcopy`` of the backbone (e.g. a
    frozen teacher) rebinds ``owner`` to the copy instead of the original.
    """

    def __init__(self, owner: TimmBackbone, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        taps = self.owner._active_taps
        if taps is None or not isinstance(output, torch.Tensor):
            return None
        return self.owner.tap(self.name, output, taps)


def _feature_modules(model: nn.Module) -> list[str]:
    """Module names of timm's ``feature_info`` entries that resolve to submodules."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    if hasattr(info, "get_dicts"):  # FeatureInfo object (features_only models)
        info = info.get_dicts()
    names: list[str] = []
    for entry in info:
        module_name = entry.get("module") if isinstance(entry, Mapping) else None
        if not module_name:
            continue
        try:
            model.get_submodule(module_name)
        except AttributeError:
            log.warning("timm feature_info module %r not found; tap skipped", module_name)
            continue
        names.append(module_name)
    return names


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict from ``path``; ConfigError naming the file if it cannot be read."""
    key = "backbone.checkpoint_path"
    if not os.path.isfile(path):
        raise ConfigError(key, f"file '{path}' does not exist", fix="give a local state-dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise ConfigError(
            key,
            f"file '{path}' could not be read as a state dict ({type(err).__name__}: {err})",
            fix="save it with torch.save(model.state_dict(), path)",
        ) from err
    for nested in _NESTED_STATE_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(nested), Mapping):
            obj = obj[nested]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            key,
            f"file '{path}' does not hold a state dict (a mapping name -> tensor)",
            fix="save it with torch.save(model.state_dict(), path)",
        )
    return {str(k): v for k, v in obj.items()}


def _strip_prefixes(
    state: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``module.``, ``model.``) when that makes keys match the model."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if len(model_keys & stripped.keys()) > len(model_keys & state.keys()):
                state = stripped
    return state


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load matching tensors (same name and shape) from ``path`` into ``model``, non-strictly.

    Raises ConfigError naming the file if it is missing or corrupt, or if no key matches.
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    state = _strip_prefixes(state, set(own))
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ConfigError(
            "backbone.checkpoint_path",
            f"no tensor in '{path}' matches the model by name and shape",
            fix="check that the checkpoint belongs to this timm model and in_chans",
        )
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    missing = sorted(set(own) - matched.keys())
    model.load_state_dict(matched, strict=False)
    if mismatched or missing:
        log.warning(
            "checkpoint '%s': loaded %d tensors; %d shape mismatches skipped %s; "
            "%d model tensors not in the file %s",
            path,
            len(matched),
            len(mismatched),
            mismatched[:5],
            len(missing),
            missing[:5],
        )


class TimmBackbone(Backbone):
    """``timm.create_model(model_name, num_classes=0, in_chans=C)`` with stage taps.

    ``pretrained`` downloads timm's weights (needs network); ``checkpoint_path`` loads a local
    state dict non-strictly; ``img_size`` is passed to models that take it (e.g. ViTs).
    """

    def __init__(
        self,
        model_name: str,
        input_shape: tuple[int, int, int],
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        import timm  # heavy import, only needed for timm backbones

        if not timm.is_model(model_name):
            raise ConfigError(
                "backbone.name",
                f"timm has no model '{model_name}'",
                fix="see timm.list_models(); e.g. timm:resnet18",
            )
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": int(input_shape[0])}
        if img_size is not None:
            kwargs["img_size"] = img_size
        try:
            self.model: nn.Module = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except TypeError as err:
            if img_size is not None and "img_size" in str(err):
                raise ConfigError(
                    "backbone.img_size",
                    f"timm model '{model_name}' does not take img_size",
                    fix="remove backbone.img_size",
                ) from err
            raise
        except Exception as err:
            if not pretrained:
                raise
            raise ConfigError(
                "backbone.pretrained",
                f"could not load pretrained weights for '{model_name}' ({err})",
                fix="set backbone.pretrained=false and give backbone.checkpoint_path",
            ) from err
        if checkpoint_path is not None:
            load_checkpoint(self.model, str(checkpoint_path))

        self.model_name = model_name
        # Models with a pre-logits head (e.g. MobileNetV3) output head_hidden_size features.
        self.feature_dim = int(
            getattr(self.model, "head_hidden_size", None) or self.model.num_features
        )
        self._active_taps: TapContext | None = None
        modules = _feature_modules(self.model)
        self.tap_names = tuple(f"stage{i}" for i in range(len(modules)))
        self.tap_modules = dict(zip(self.tap_names, modules, strict=True))
        for name, module_name in self.tap_modules.items():
            self.model.get_submodule(module_name).register_forward_hook(_TapHook(self, name))

    def forward(self, x: torch.Tensor, taps: TapContext | None = None) -> torch.Tensor:
        if taps is None:
            return self.model(x)
        taps.validate(self.tap_names)
        self._active_taps = taps
        try:
            return self.model(x)
        finally:
            self._active_taps = None
