"""Report figures: the accuracy matrix and the average-accuracy curves.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through ``pyplot``,
so plotting leaves no global figure state behind and needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from cl_framework.evaluation.metrics import _check_matrix

__all__ = ["plot_accuracy_matrix", "plot_average_accuracy"]


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def plot_accuracy_matrix(acc: ArrayLike, path: Path, title: str) -> Path:
    """Heatmap of ``acc[i, j]`` on a fixed 0..100 scale, with the value in each cell."""
    matrix = _check_matrix(acc)
    size = matrix.shape[0]
    side = min(4.0 + 0.6 * size, 16.0)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=100.0, cmap="viridis")
    figure.colorbar(image, ax=ax, label="accuracy (%)")
    ticks = np.arange(size)
    ax.set_xticks(ticks, [str(j + 1) for j in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])
    ax.set_xlabel("tested on experience j")
    ax.set_ylabel("after training experience i")
    ax.set_title(title)
    fontsize = max(5.0, 11.0 - 0.4 * size)
    for i in range(size):
        for j in range(size):
            value = matrix[i, j]
            color = "black" if value > 60.0 else "white"  # readable on viridis' light end
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=color, fontsize=fontsize)
    return _save(figure, path)


def plot_average_accuracy(curves: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """One line per setting (e.g. class_il, task_il): mean accuracy over seen experiences."""
    if not curves:
        raise ValueError("plot_average_accuracy: give at least one curve")
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    longest = 0
    for name, curve in curves.items():
        values = np.asarray(curve, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"plot_average_accuracy: curve '{name}' must be a non-empty list")
        steps = np.arange(1, values.size + 1)
        ax.plot(steps, values, marker="o", label=name)
        longest = max(longest, values.size)
    ax.set_xticks(np.arange(1, longest + 1))
    ax.set_xlim(0.5, longest + 0.5)
    ax.set_ylim(0.0, 102.0)  # headroom so a curve at 100 % is not clipped
    ax.set_xlabel("experience")
    ax.set_ylabel("average accuracy on seen experiences (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(figure, path)
