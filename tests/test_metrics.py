"""CL metrics on hand-computed accuracy matrices, and the report plots."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from cl_framework.evaluation import (
    average_accuracy_curve,
    backward_transfer,
    final_average_accuracy,
    forgetting,
    forward_transfer,
    summarize,
)
from cl_framework.evaluation.plots import plot_accuracy_matrix, plot_average_accuracy

# Row i = after training experience i, column j = tested on experience j (percent).
ACC_3 = np.array(
    [
        [90.0, 88.0, 5.0],  # 88 on the untrained experience 1: a future evaluation
        [70.0, 85.0, 12.0],
        [60.0, 75.0, 80.0],
    ]
)
RANDOM_3 = np.array([8.0, 9.0, 11.0])

ACC_4 = np.array(
    [
        [80.0, 30.0, 20.0, 25.0],
        [60.0, 90.0, 22.0, 18.0],
        [82.0, 70.0, 85.0, 30.0],  # 82 > 80: experience 0 improved after experience 2
        [50.0, 72.0, 60.0, 95.0],
    ]
)
RANDOM_4 = np.array([10.0, 20.0, 25.0, 15.0])


def test_3x3_by_hand() -> None:
    # final: (60 + 75 + 80) / 3 = 215 / 3
    assert final_average_accuracy(ACC_3) == pytest.approx(215 / 3)
    # curve: [90], [(70 + 85) / 2 = 77.5], [215 / 3]
    assert average_accuracy_curve(ACC_3) == pytest.approx([90.0, 77.5, 215 / 3])
    # forgetting: j=0: max(90, 70) - 60 = 30; j=1: max(85) - 75 = 10 -> 20.
    # The future evaluation acc[0, 1] = 88 must not count (it would give 88 - 75 = 13).
    assert forgetting(ACC_3) == pytest.approx(20.0)
    # bwt: j=0: 60 - 90 = -30; j=1: 75 - 85 = -10 -> -20
    assert backward_transfer(ACC_3) == pytest.approx(-20.0)
    # fwt: j=1: acc[0, 1] - r[1] = 88 - 9 = 79; j=2: acc[1, 2] - r[2] = 12 - 11 = 1 -> 40
    assert forward_transfer(ACC_3, RANDOM_3) == pytest.approx(40.0)


def test_4x4_by_hand() -> None:
    # final: (50 + 72 + 60 + 95) / 4 = 277 / 4 = 69.25
    assert final_average_accuracy(ACC_4) == pytest.approx(69.25)
    # curve: 80; (60 + 90) / 2 = 75; (82 + 70 + 85) / 3 = 79; 69.25
    assert average_accuracy_curve(ACC_4) == pytest.approx([80.0, 75.0, 79.0, 69.25])
    # forgetting: j=0: max(80, 60, 82) - 50 = 32; j=1: max(90, 70) - 72 = 18;
    #             j=2: max(85) - 60 = 25  -> (32 + 18 + 25) / 3 = 25
    assert forgetting(ACC_4) == pytest.approx(25.0)
    # bwt: (50 - 80) + (72 - 90) + (60 - 85) = -30 - 18 - 25 = -73 -> -73 / 3
    assert backward_transfer(ACC_4) == pytest.approx(-73 / 3)
    # fwt: (30 - 20) + (22 - 25) + (30 - 15) = 10 - 3 + 15 = 22 -> 22 / 3
    # (the random-init baseline: Mammoth's "accuracy just before training j" would give ~0)
    assert forward_transfer(ACC_4, RANDOM_4) == pytest.approx(22 / 3)
    assert summarize(ACC_4, RANDOM_4) == pytest.approx(
        {"final_avg_acc": 69.25, "forgetting": 25.0, "bwt": -73 / 3, "fwt": 22 / 3}
    )


def test_improvement_gives_negative_forgetting() -> None:
    # j=0 rises from 50 to 70: forgetting = 50 - 70 = -20, bwt = 70 - 50 = +20; the final
    # row is not part of the max, so the gain is not hidden.
    acc = [[50.0, 0.0], [70.0, 80.0]]
    assert forgetting(acc) == pytest.approx(-20.0)
    assert backward_transfer(acc) == pytest.approx(20.0)
    assert forward_transfer(acc, [10.0, 5.0]) == pytest.approx(-5.0)  # 0 - 5


def test_single_experience() -> None:
    acc = np.array([[42.0]])
    assert final_average_accuracy(acc) == 42.0
    assert average_accuracy_curve(acc) == [42.0]
    assert summarize(acc, np.array([10.0])) == {
        "final_avg_acc": 42.0,
        "forgetting": 0.0,
        "bwt": 0.0,
        "fwt": 0.0,
    }


def test_results_are_python_floats() -> None:
    values = summarize(ACC_3, RANDOM_3)
    assert all(type(v) is float for v in values.values())
    assert all(type(v) is float for v in average_accuracy_curve(ACC_3))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3)), np.zeros(3), np.zeros((0, 0)), np.zeros((2, 2, 2))]
)
def test_matrix_shape_errors(bad: np.ndarray) -> None:
    for fn in (final_average_accuracy, average_accuracy_curve, forgetting, backward_transfer):
        with pytest.raises(ValueError, match="square"):
            fn(bad)
    with pytest.raises(ValueError, match="square"):
        summarize(bad, np.zeros(2))


def test_random_init_shape_errors() -> None:
    with pytest.raises(ValueError, match="random_init"):
        forward_transfer(ACC_3, np.zeros(2))
    with pytest.raises(ValueError, match="random_init"):
        summarize(ACC_3, np.zeros((3, 1)))


# --------------------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (right after the 8-byte magic)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_no_pyplot_figures() -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_plot_accuracy_matrix_writes_png(tmp_path: Path) -> None:
    out = plot_accuracy_matrix(ACC_4, tmp_path / "nested" / "acc.png", "seq-mnist class-IL")
    assert out == tmp_path / "nested" / "acc.png" and out.stat().st_size > 5_000
    width, height = png_size(out)
    assert 300 <= width <= 2500 and 300 <= height <= 2500
    big = plot_accuracy_matrix(np.full((20, 20), 50.0), tmp_path / "big.png", "20 experiences")
    assert max(png_size(big)) <= 2500
    assert_no_pyplot_figures()


def test_plot_average_accuracy_writes_png(tmp_path: Path) -> None:
    curves = {
        "class_il": average_accuracy_curve(ACC_4),
        "task_il": [99.0, 97.5, 96.0, 95.2],
    }
    out = plot_average_accuracy(curves, tmp_path / "avg.png", "average accuracy")
    assert out.stat().st_size > 5_000
    width, height = png_size(out)
    assert 300 <= width <= 2500 and 200 <= height <= 2500
    with pytest.raises(ValueError):
        plot_average_accuracy({}, tmp_path / "none.png", "empty")
    assert_no_pyplot_figures()
