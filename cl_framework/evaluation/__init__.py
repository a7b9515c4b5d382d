"""Accuracy matrices, continual-learning metrics and report plots.

The plot functions are imported on first use, so that code needing only the metrics does not
pay for importing matplotlib.
"""

from __future__ import annotations

from typing import Any

from cl_framework.evaluation.metrics import (
    average_accuracy_curve,
    backward_transfer,
    final_average_accuracy,
    forgetting,
    forward_transfer,
    summarize,
)

__all__ = [
    "average_accuracy_curve",
    "backward_transfer",
    "final_average_accuracy",
    "forgetting",
    "forward_transfer",
    "plot_accuracy_matrix",
    "plot_average_accuracy",
    "summarize",
]

_LAZY = {"plot_accuracy_matrix", "plot_average_accuracy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from cl_framework.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
