"""A frozen copy of the network as a distillation teacher (LwF, iCaRL), checkpointed.

The teacher exists only from the second experience on, so it is not a registered sub-module
(the state_dict keys would change between experiences); it travels through ``plugin_state``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn


class FrozenTeacherMixin:
    """For a :class:`StrategyPlugin`: ``self.teacher`` (None until :meth:`freeze_teacher`)."""

    teacher: nn.Module | None

    def _make_teacher(self) -> nn.Module:
        module = self.module  # type: ignore[attr-defined]
        teacher = nn.Sequential(copy.deepcopy(module.backbone), copy.deepcopy(module.head))
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def freeze_teacher(self) -> None:
        """The network as it is now becomes the teacher."""
        object.__setattr__(self, "teacher", self._make_teacher())

    def plugin_state(self) -> dict[str, Any]:
        teacher = self.teacher
        return {"teacher": None if teacher is None else teacher.state_dict()}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        if state.get("teacher") is None:
            object.__setattr__(self, "teacher", None)
            return
        teacher = self._make_teacher()
        teacher.load_state_dict(state["teacher"])
        object.__setattr__(self, "teacher", teacher.to(self.module.device))  # type: ignore[attr-defined]
