"""What a user sees on the console: where the run is, which defaults it took, validation."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import compose_config, run_clf_train


def clf_train(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # auto threads
    proc = run_clf_train(tmp_path, *overrides, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_progress_validation_and_defaults_are_printed(tmp_path):
    proc = clf_train(
        tmp_path,
        "trainer.progress_bar=true",
        "trainer.epochs=2",
        "scenario.val_fraction=0.1",
        "strategy=[derpp,val_eval]",
    )
    bar = proc.stdout.replace("\r", "\n")
    # experience i/N and epoch e/E, counted in optimizer steps (243 rows / batch 10 = 25), loss
    final = re.findall(r"experience 3/5 \| epoch 2/2: 100%\S* (\d+)/(\d+) \[[^\]]*, loss \d", bar)
    assert final and final[-1][0] == final[-1][1] == "25", bar[-1500:]
    assert "experience 1/5 | epoch 1/2" in bar and "step/s" in bar
    log = proc.stderr + proc.stdout
    assert "config: scenario seq-digits | backbone mlp | trainer seq-digits" in log
    assert "CPU threads: 1 (auto: small model" in log
    assert re.search(r"validation after experience 5/5: avg class-IL \d+\.\d\d", log)
    assert "class-IL on experiences 1..5:" in log
    assert "before training (FWT reference): class-IL accuracy on" in log
    header = next(line for line in log.splitlines() if line.strip().startswith("e1"))
    assert header.split() == ["e1", "e2", "e3", "e4", "e5"]
    assert "-0.00" not in log


def test_held_out_data_without_val_eval_warns(tmp_path):
    proc = clf_train(tmp_path, "scenario.val_fraction=0.2", "trainer.epochs=1")
    assert "scenario.val_fraction=0.2 holds 20% of each experience's training data out" in (
        proc.stderr + proc.stdout
    )


@pytest.mark.parametrize(
    ("overrides", "backbone", "epochs", "batch"),
    [
        ([], "mlp", 5, 10),
        (["scenario=seq-mnist"], "mlp", 1, 10),
        (["scenario=perm-mnist"], "mlp", 1, 128),
        (["scenario=seq-cifar10"], "resnet18", 50, 32),
        (["scenario=seq-tinyimagenet-half"], "resnet18", 100, 32),
        (["scenario=seq-cifar10", "backbone=mlp", "trainer.epochs=3"], "mlp", 3, 32),
        (["scenario=seq-cifar10", "trainer=default"], "resnet18", 1, 32),
        (["experiment=seq-cifar10/twf-500"], "resnet18", 50, 32),
        (["experiment=seq-mnist/derpp-500"], "mlp", 1, 10),
    ],
)
def test_a_scenario_brings_its_backbone_and_trainer(overrides, backbone, epochs, batch):
    cfg = compose_config(overrides)
    assert cfg.backbone.name == backbone
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (epochs, batch)


def test_summary_matrix_is_aligned_one_based_and_has_no_negative_zero():
    from cl_framework.evaluation.report import fmt_acc, format_summary

    assert fmt_acc(-0.001) == "0.00" and fmt_acc(-0.5) == "-0.50" and fmt_acc(12.345) == "12.35"
    matrix = [[99.5, 0.0], [80.25, 97.0]]
    metrics = {
        "acc_matrix": {"class_il": matrix, "task_il": matrix},
        **{k: {"class_il": -0.004, "task_il": 1.0} for k in ("final_avg_acc", "forgetting")},
        **{k: {"class_il": 2.0, "task_il": -0.0} for k in ("bwt", "fwt")},
        "wall_time_s": 1.0,
        "train_time_s": 1.0,
    }
    lines = format_summary(metrics).splitlines()
    header, first, second = lines[1], lines[2], lines[3]
    assert header.split() == ["e1", "e2"] and first.startswith("  after  1:")
    assert second.startswith("  after  2:")
    # every column label ends where its numbers end
    for label, value in (("e1", "99.50"), ("e2", "0.00")):
        assert header.index(label) + len(label) == first.index(value) + len(value)
    assert "-0.00" not in "\n".join(lines)
