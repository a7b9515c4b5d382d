"""The out-of-tree plug-in example of the README runs as documented: from its own folder, with
the ``clf-train`` console script, no PYTHONPATH, ``--config-dir`` for its YAML."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CLF_TRAIN = Path(sys.executable).parent / "clf-train"


@pytest.mark.parametrize("module", ["feature_decay.py", "feature_decay"])
def test_out_of_tree_plugin_runs_from_its_folder(tmp_path, module):
    folder = tmp_path / "plugin"
    shutil.copytree(ROOT / "examples" / "plugin", folder)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(CLF_TRAIN), "--config-dir", "conf", f"extra_modules=[{module}]",
         "strategy=[er,feature_decay]", "buffer.size=100", "strategy.feature_decay.weight=0.05",
         "trainer.epochs=1", "trainer.log_every_n_steps=5", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["strategy"] == ["er", "feature_decay"]
    # the group file conf/strategy/feature_decay.yaml was found through --config-dir
    assert metrics["config"]["strategy"]["feature_decay"] == {"weight": 0.05}
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        terms = [float(r["train/loss_feature_decay"]) for r in csv.DictReader(f)
                 if r.get("train/loss_feature_decay")]  # fmt: skip
    assert terms and all(t > 0 for t in terms)  # the plug-in's loss term was trained on


def test_missing_plugin_file_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [str(CLF_TRAIN), "extra_modules=[nope.py]", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "config key 'extra_modules': no file 'nope.py'" in proc.stderr
