"""Continual-learning metrics from an accuracy matrix (percentages).

``acc[i, j]`` is the accuracy on experience ``j`` after training experience ``i``, for every
``j`` (future experiences included, which forward transfer needs). Metrics that look back only
use the rows at or after an experience was trained, so the future evaluations in the upper
triangle never leak into forgetting (Mammoth zero-pads a lower-triangular matrix instead).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "average_accuracy_curve",
    "backward_transfer",
    "final_average_accuracy",
    "forgetting",
    "forward_transfer",
    "summarize",
]


def _check_matrix(acc: ArrayLike) -> np.ndarray:
    """Square T x T float matrix with T >= 1, else ValueError."""
    matrix = np.asarray(acc, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(
            f"accuracy matrix must be square T x T with T >= 1 (row i = after experience i, "
            f"column j = tested on experience j), got shape {matrix.shape}"
        )
    return matrix


def _check_baseline(random_init: ArrayLike, n_experiences: int) -> np.ndarray:
    baseline = np.asarray(random_init, dtype=np.float64)
    if baseline.shape != (n_experiences,):
        raise ValueError(
            f"random_init must hold one accuracy per experience, shape ({n_experiences},), "
            f"got {baseline.shape}"
        )
    return baseline


def final_average_accuracy(acc: ArrayLike) -> float:
    """Mean of the last row over all experiences: the headline number of a CL run."""
    matrix = _check_matrix(acc)
    return float(matrix[-1].mean())


def average_accuracy_curve(acc: ArrayLike) -> list[float]:
    """After each experience ``i``, the mean accuracy over experiences ``0..i`` seen so far."""
    matrix = _check_matrix(acc)
    return [float(matrix[i, : i + 1].mean()) for i in range(matrix.shape[0])]


def forgetting(acc: ArrayLike) -> float:
    """Mean over ``j < T-1`` of the drop from the best accuracy on ``j`` to the final one.

    The best is taken over rows ``l in [j, T-2]`` (after ``j`` was trained, before the end);
    evaluations before ``j`` was trained are excluded. 0.0 for a single experience.
    """
    matrix = _check_matrix(acc)
    last = matrix.shape[0] - 1
    if last == 0:
        return 0.0
    drops = [matrix[j:last, j].max() - matrix[last, j] for j in range(last)]
    return float(np.mean(drops))


def backward_transfer(acc: ArrayLike) -> float:
    """Mean over ``j < T-1`` of ``acc[T-1, j] - acc[j, j]``; negative means forgetting."""
    matrix = _check_matrix(acc)
    last = matrix.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean(matrix[last, :last] - np.diag(matrix)[:last]))


def forward_transfer(acc: ArrayLike, random_init: ArrayLike) -> float:
    """Mean over ``j >= 1`` of ``acc[j-1, j] - random_init[j]`` (GEM's definition).

    ``random_init[j]`` is the accuracy of the randomly initialised network on experience ``j``.
    Mammoth instead uses the current model just before it trains ``j``, which makes FWT about 0.
    """
    matrix = _check_matrix(acc)
    baseline = _check_baseline(random_init, matrix.shape[0])
    if matrix.shape[0] == 1:
        return 0.0
    before = np.diag(matrix, k=1)  # acc[j-1, j] for j = 1..T-1
    return float(np.mean(before - baseline[1:]))


def summarize(acc: ArrayLike, random_init: ArrayLike) -> dict[str, float]:
    """The four scalar metrics of ``metrics.json`` for one setting (class-IL or task-IL)."""
    return {
        "final_avg_acc": final_average_accuracy(acc),
        "forgetting": forgetting(acc),
        "bwt": backward_transfer(acc),
        "fwt": forward_transfer(acc, random_init),
    }
