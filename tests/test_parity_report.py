"""The parity report's verdict and tables (experiments/parity/report.py), without official code."""

from __future__ import annotations

import statistics
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments" / "parity"))

import report


def test_verdict_is_two_official_standard_deviations():
    official = [60.2, 60.1, 64.4]  # SER ER-ACE proxy, official side
    limit = 2 * statistics.stdev(official)  # 4.91
    inside = [v + limit - 0.01 for v in official]
    outside = [v + limit + 0.01 for v in official]
    assert report.parity_verdict(official, inside).startswith("yes")
    assert report.parity_verdict(official, outside).startswith("NO")
    assert report.parity_verdict(official[:1], inside) == "-"  # no spread from one seed


def test_summary_table_reads_both_sides_and_missing_fwt():
    results = {
        "erace": {
            "official": {str(s): {"class_il": v, "task_il": 97.0, "fwt_class_il": None,
                                  "wall_time_s": 38.0} for s, v in enumerate([60.2, 60.1, 64.4])},
            "ours": {str(s): {"class_il": v, "task_il": 96.0, "fwt_class_il": -12.5,
                              "process_s": 30.0} for s, v in enumerate([66.8, 67.7, 62.7])},
        }
    }  # fmt: skip
    table = report.summary_table("ser", results)
    row = next(line for line in table.splitlines() if line.startswith("| ER-ACE, buffer 500"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "61.57 ± 2.45" and cells[2] == "65.73 ± 2.67"
    assert cells[3] == "yes (4.17 vs 4.91)"
    assert cells[4] == "-" and cells[5] == "-12.50 ± 0.00"
    assert cells[8] == "38 / 30"
