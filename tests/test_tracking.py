"""Every enabled tracker gets the resolved config as hyper-parameters and the final metrics
(issue: offline wandb / TensorBoard runs carried no strategy, lr or results)."""

from __future__ import annotations

import pytest
import yaml

from cl_framework.evaluation.tracking import flatten_config, matrix_markdown, run_hyperparameters
from cl_framework.train import run
from tests.conftest import compose_config


def test_flatten_and_markdown_by_hand():
    flat = flatten_config({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": None}
    params = run_hyperparameters({"strategy": {"er": {}, "lwf": {"alpha": 1.0}}, "resume": "x"})
    assert params["strategies"] == "er,lwf" and params["strategy.lwf.alpha"] == 1.0
    assert "resume" not in params
    assert matrix_markdown([[50.0, 0.0], [40.0, 90.5]]).splitlines() == [
        "| after \\ on | e1 | e2 |",
        "|---|---|---|",
        "| 1 | 50.00 | 0.00 |",
        "| 2 | 40.00 | 90.50 |",
    ]


def test_csv_tensorboard_and_wandb_receive_config_and_final_metrics(tmp_path):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    cfg = compose_config(
        ["logger=[csv,tensorboard,wandb]", "trainer.epochs=1", "strategy.derpp.alpha=0.25"]
    )
    metrics = run(cfg, tmp_path)

    hparams = yaml.safe_load((tmp_path / "logs" / "hparams.yaml").read_text())
    assert hparams["strategy.derpp.alpha"] == 0.25 and hparams["strategies"] == "derpp"
    header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "final/final_avg_acc_class_il" in header and "final/fwt_task_il" in header

    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "tensorboard"))
    mux.Reload()
    scalars = {tag for run_tags in mux.Runs().values() for tag in run_tags.get("scalars", [])}
    assert "final/final_avg_acc_class_il" in scalars and "final/forgetting_class_il" in scalars
    values = [
        e.value
        for name in mux.Runs()
        if "final/final_avg_acc_class_il" in mux.Runs()[name].get("scalars", [])
        for e in mux.Scalars(name, "final/final_avg_acc_class_il")
    ]
    assert values == pytest.approx([metrics["final_avg_acc"]["class_il"]], abs=1e-4)
    session = mux.PluginRunToTagToContent("hparams")["."]
    assert b"strategy.derpp.alpha" in session["_hparams_/session_start_info"]
    assert b"final/final_avg_acc_class_il" in session["_hparams_/experiment"]
    assert "acc_matrix/class_il/text_summary" in mux.Runs()["."]["tensors"]

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()  # wandb's offline record log: keys are stored as text
    for key in (b"strategy.derpp.alpha", b"final/final_avg_acc_class_il", b"acc_matrix/class_il"):
        assert key in data, key
