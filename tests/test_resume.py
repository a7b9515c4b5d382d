"""Reliability: exact resume after SIGKILL / interrupts, safe checkpoints, NaN stops.

Kills are deterministic: a test-only plug-in (tests/fault_injection.py, loaded through
``extra_modules``) kills its own process at a chosen global step, so "killed during
experience 3" is exact. The reference run carries the same config without the env var.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cl_framework.build import build_runner
from cl_framework.engine.checkpoint import checkpoint_path, load_checkpoint
from cl_framework.errors import NonFiniteLossError
from tests.conftest import ROOT

FAULT = "extra_modules=[tests.fault_injection]"


def clf_train(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "cl_framework.train", "trainer.progress_bar=false", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_results(a: dict, b: dict) -> None:
    for key in ("acc_matrix", "final_avg_acc", "forgetting", "bwt", "fwt", "random_init_acc"):
        assert a[key] == b[key], key


def seq_mnist_args(data_dir: Path, limit: int | None) -> list[str]:
    args = ["experiment=seq-mnist/derpp-500", f"paths.data_dir={data_dir}", FAULT,
            "+strategy._fault={}"]  # fmt: skip
    if limit is not None:
        args.append(f"trainer.limit_train_batches={limit}")
    return args


def reference_run(run_dir: Path, base: list[str]) -> dict:
    ref = clf_train([*base, f"hydra.run.dir={run_dir}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    return metrics(run_dir)


def kill_resume_compare(
    tmp_path: Path,
    base: list[str],
    fault_env: dict[str, str],
    extra: list[str] = (),
    reference: dict | None = None,
) -> None:
    """Run with a fault, resume, and compare with an uninterrupted run of the same config.

    ``extra`` options must not change results (checkpoint frequency), so one reference serves.
    """
    broken = tmp_path / "broken"
    if reference is None:
        reference = reference_run(tmp_path / "reference", base)
    killed = clf_train([*base, *extra, f"hydra.run.dir={broken}"], env_extra=fault_env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (broken / "metrics.json").exists()
    assert checkpoint_path(broken).exists()
    resumed = clf_train([f"resume={broken}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    assert_same_results(reference, metrics(broken))


# 100 steps per experience: experience 3 (index 2) holds global steps 201..300.
LIMIT = 100


@pytest.fixture(scope="module")
def seq_mnist_reference(tmp_path_factory, real_data_dir) -> dict:
    """One uninterrupted Seq-MNIST DER++-500 run (100 steps per experience) for the module."""
    run_dir = tmp_path_factory.mktemp("reference")
    return reference_run(run_dir, seq_mnist_args(real_data_dir, LIMIT))


def test_sigkill_during_experience_3_resumes_identically(
    tmp_path, real_data_dir, seq_mnist_reference
):
    kill_resume_compare(
        tmp_path,
        seq_mnist_args(real_data_dir, LIMIT),
        {"CLF_FAULT": "kill", "CLF_FAULT_STEP": "250"},
        reference=seq_mnist_reference,
    )


def test_sigkill_resumes_mid_experience_from_step_checkpoint(
    tmp_path, real_data_dir, seq_mnist_reference
):
    # checkpoints every 30 steps: the last one before the kill is at step 240 (epoch 0,
    # batch 40 of experience 3); resuming skips exactly those batches.
    kill_resume_compare(
        tmp_path,
        seq_mnist_args(real_data_dir, LIMIT),
        {"CLF_FAULT": "kill", "CLF_FAULT_STEP": "250"},
        extra=["trainer.checkpoint_every_n_steps=30"],
        reference=seq_mnist_reference,
    )


def test_sigkill_while_writing_checkpoint_keeps_previous(
    tmp_path, real_data_dir, seq_mnist_reference
):
    # the 3rd checkpoint write (end of experience 3) dies half-way; the 2nd must survive
    kill_resume_compare(
        tmp_path,
        seq_mnist_args(real_data_dir, LIMIT),
        {"CLF_FAULT": "kill_in_write", "CLF_FAULT_WRITE": "3"},
        reference=seq_mnist_reference,
    )
    leftovers = list((tmp_path / "broken" / "checkpoints").glob(".*.tmp"))
    assert leftovers == [] or all(p.stat().st_size > 0 for p in leftovers)


def test_sigint_saves_checkpoint_and_partial_results_then_resumes(tmp_path):
    base = ["experiment=seq-digits/derpp", FAULT, "+strategy._fault={}"]
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    assert clf_train([*base, f"hydra.run.dir={reference}"]).returncode == 0
    stopped = clf_train(
        [*base, f"hydra.run.dir={broken}"],
        env_extra={"CLF_FAULT": "interrupt", "CLF_FAULT_STEP": "300"},
    )
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "interrupted by signal" in stopped.stderr
    partial = json.loads((broken / "partial_metrics.json").read_text())
    assert partial["status"] == "incomplete"
    assert partial["step"] == 300
    assert len(partial["acc_matrix"]["class_il"]) == partial["completed_experiences"]
    position = load_checkpoint(broken)["training"]["position"]
    assert position["step"] == 300 and position["in_experience"]
    resumed = clf_train([f"resume={broken}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_results(metrics(reference), metrics(broken))


def test_planted_nan_stops_with_message_and_loadable_checkpoint(make_config, tmp_path):
    cfg = make_config(FAULT, "+strategy._fault.nan_at_step=123", "experiment=seq-digits/derpp")
    runner = build_runner(cfg, tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        runner.run()
    message = str(info.value)
    assert "step 123" in message
    assert "planted=nan" in message and "ce=" in message and "derpp_ce=" in message
    payload = load_checkpoint(tmp_path)  # weights_only load
    assert payload["training"]["position"]["step"] == 123  # the state before the bad step
    weights = payload["training"]["model"]
    assert all(bool(v.isfinite().all()) for v in weights.values() if v.is_floating_point())
    assert json.loads((tmp_path / "partial_metrics.json").read_text())["step"] == 123
    # the checkpoint rebuilds a run (resumable after fixing the cause)
    again = build_runner(cfg, tmp_path / "again")
    again.load_checkpoint_payload(payload, "ckpt")
    assert again.module.step_count == 123


def test_cli_nan_exit_code_and_message(tmp_path):
    proc = clf_train(
        [
            "experiment=seq-digits/er",
            FAULT,
            "+strategy._fault.nan_at_step=5",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    assert proc.returncode == 3
    assert "non-finite loss at step 5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_full_seq_mnist_derpp_500_sigkill_in_experience_3(tmp_path, real_data_dir):
    """The acceptance run: full Seq-MNIST (1200 steps per experience), killed at step 3000."""
    kill_resume_compare(
        tmp_path,
        seq_mnist_args(real_data_dir, None),
        {"CLF_FAULT": "kill", "CLF_FAULT_STEP": "3000"},
    )


def test_full_seq_mnist_derpp_500_killed_while_writing(tmp_path, real_data_dir):
    kill_resume_compare(
        tmp_path,
        seq_mnist_args(real_data_dir, None),
        {"CLF_FAULT": "kill_in_write", "CLF_FAULT_WRITE": "3"},
    )


def test_resume_with_a_changed_key_names_that_key(tmp_path):
    first = clf_train(["trainer.epochs=1", "strategy=[er]", "buffer.size=50",
                       f"hydra.run.dir={tmp_path}"])  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    changed = clf_train(["trainer.epochs=1", "strategy=[er]", "buffer.size=50",
                         "optimizer.lr=0.5", f"resume={tmp_path}"])  # fmt: skip
    assert changed.returncode == 2
    assert "differs from the checkpointed run at 'optimizer.lr'" in changed.stderr
