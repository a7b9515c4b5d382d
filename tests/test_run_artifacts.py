"""Mammoth habits: checkpoints kept per experience, a trained model loaded back from its run
directory, and one results log across runs."""

from __future__ import annotations

import json

import pytest

from cl_framework import load_trained
from cl_framework.errors import CheckpointError
from cl_framework.train import run
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    cfg = compose_config(
        [
            "strategy=[er]",
            "buffer.size=100",
            "trainer.epochs=2",
            "trainer.keep_experience_checkpoints=true",
            f"paths.results_log={root / 'results.jsonl'}",
        ]
    )
    run_dir = root / "run"
    metrics = run(cfg, run_dir)
    return root, run_dir, metrics


def test_experience_checkpoints_load_back_to_the_measured_accuracies(finished_run):
    _, run_dir, metrics = finished_run
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("experience-*.ckpt"))
    assert kept == [f"experience-{i:02d}.ckpt" for i in range(1, 6)]
    for experience in (2, None):
        trained = load_trained(run_dir, experience=experience)
        row = trained.evaluate()
        expected = metrics["acc_matrix"]["class_il"][(experience or 5) - 1]
        assert row.class_il == pytest.approx(expected, abs=1e-4)  # metrics.json: 4 decimals
        assert not trained.module.training
    with pytest.raises(CheckpointError, match="no checkpoint kept after experience 9"):
        load_trained(run_dir, experience=9)


def test_results_log_has_one_line_per_run(finished_run, tmp_path):
    root, run_dir, metrics = finished_run
    lines = (root / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["run_dir"] == str(run_dir.resolve())
    assert record["strategy"] == ["er"] and record["buffer_size"] == 100
    assert record["final_avg_acc"] == metrics["final_avg_acc"]
    run(compose_config(["trainer.epochs=1", f"paths.results_log={root / 'results.jsonl'}",
                        "trainer.checkpoint=false"]), tmp_path)  # fmt: skip
    assert len((root / "results.jsonl").read_text().splitlines()) == 2
