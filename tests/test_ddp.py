"""DDP with 2 CPU processes (gloo) on real Seq-MNIST: buffer semantics and accuracy.

Reduced data (300 training images per class, 300 global steps) keeps the three runs short.
``replicated``: both ranks hold the identical buffer after every experience, and accuracy is
within 2 points of one process with the same global batch (10 = 2 x 5). ``sharded``: the
ranks' buffers are disjoint and their union has the configured capacity.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_resume import clf_train

COMMON = ["experiment=seq-mnist/derpp-500", "scenario.max_train_per_class=300",
          "extra_modules=[tests.ddp_probe]", "+strategy._ddp_probe={}"]  # fmt: skip
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
       "trainer.batch_size=5"]  # fmt: skip


def probes(run_dir: Path, rank: int) -> list[dict]:
    lines = (run_dir / f"probe_rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def final_class_il(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["final_avg_acc"]["class_il"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, real_data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    proc = clf_train([*COMMON, f"paths.data_dir={real_data_dir}", "trainer.batch_size=10",
                      f"hydra.run.dir={run_dir}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_ddp_replicated_buffers_identical_and_accuracy_matches(
    tmp_path, real_data_dir, single_process
):
    proc = clf_train([*COMMON, *DDP, "buffer.distributed=replicated",
                      f"paths.data_dir={real_data_dir}", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = probes(tmp_path, 0), probes(tmp_path, 1)
    assert [p["experience"] for p in r0] == [0, 1, 2, 3, 4] == [p["experience"] for p in r1]
    for a, b in zip(r0, r1, strict=True):
        assert a["size"] == b["size"] == 500
        assert a["num_seen"] == b["num_seen"]  # every rank saw the whole global stream
        assert a["digest"] == b["digest"]
    assert r0[-1]["num_seen"] == 3000
    assert abs(final_class_il(tmp_path) - final_class_il(single_process)) <= 2.0
    # one writer: rank 1 wrote no outputs of its own
    assert (tmp_path / "metrics.json").exists()
    assert not list(tmp_path.glob("*rank1*.json"))
    # one console: the progress lines are printed once, not once per rank
    assert (proc.stdout + proc.stderr).count("after experience 5/5:") == 1


def test_ddp_sharded_buffers_disjoint_union_is_capacity(tmp_path, real_data_dir):
    proc = clf_train([*COMMON, *DDP, "buffer.distributed=sharded",
                      f"paths.data_dir={real_data_dir}", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(probes(tmp_path, 0), probes(tmp_path, 1), strict=True):
        assert a["size"] == b["size"] == 250
        assert a["num_seen"] == b["num_seen"]  # each rank saw its own half of the stream
        assert not set(a["rows"]) & set(b["rows"])
        assert len(set(a["rows"]) | set(b["rows"])) == 500
