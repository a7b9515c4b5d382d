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


def test_ours_only_variant_is_judged_against_the_named_official_case():
    """TwF's train-mode-BN row has no official command of its own: it borrows twf-500's."""
    official = {
        str(s): {"class_il": v, "task_il": 90.0, "fwt_class_il": 0.0, "wall_time_s": 140.0}
        for s, v in enumerate([50.7, 60.8, 41.2])
    }
    ours = {
        str(s): {"class_il": v, "task_il": 90.0, "fwt_class_il": 0.0, "process_s": 90.0}
        for s, v in enumerate([33.6, 60.1, 42.9])
    }
    results = {"twf-500": {"official": official}, "twf-500-bn-train": {"ours": ours}}  # fmt: skip
    table = report.summary_table("twf", results)
    row = next(line for line in table.splitlines() if "train-mode sibling BN" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "50.90 ± 9.80" and cells[2] == "45.53 ± 13.44"
    assert cells[3] == "yes (5.37 vs 19.60)"


def test_twf_sibling_checkpoint_has_mammoths_resnet_keys():
    """The official TwF loads our sibling with Mammoth's key names; ours are the same names."""
    from cl_framework.backbones.resnet import reduced_resnet18

    keys = set(reduced_resnet18((3, 32, 32)).state_dict())
    # Mammoth's ResNet-18 (backbone/ResNet18.py): stem conv1/bn1, layerN.M.{conv,bn}{1,2},
    # shortcut.0 (1x1 conv) / shortcut.1 (BN) where the shape changes, then `classifier`
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.bias",
            "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var"} <= keys  # fmt: skip
    assert not any(k.startswith(("classifier", "fc", "head")) for k in keys)
    assert len([k for k in keys if "shortcut.0" in k]) == 3  # layers 2-4 only
