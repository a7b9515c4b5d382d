"""The benchmark harness (``experiments/bench``) on a tiny budget: no timing assertions.

Checks that the contenders run the same algorithm with the same hyper-parameters (so that the
timings in ``experiments/bench/RESULTS.md`` compare like with like), that the hand-written
loop learns (accuracy in a sane band on real MNIST), that its reservoir is uniform, and that
the micro-benchmark and the report writer work.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from cl_framework.build import build_runner
from tests.conftest import ROOT

BENCH = ROOT / "experiments" / "bench"
sys.path.insert(0, str(BENCH))

import bench_common  # noqa: E402
import handwritten  # noqa: E402
import micro_buffer  # noqa: E402
import profile_ours  # noqa: E402


def _load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """As the harness runs (BENCH_THREADS=1): 2 threads are slower for batch-10 ops here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist(real_data_dir: Path) -> bench_common.SeqMnist:
    return bench_common.load_seq_mnist(real_data_dir)


def test_harness_uses_the_hyperparameters_of_the_derpp_500_experiment(make_config):
    cfg = make_config("experiment=seq-mnist/derpp-500")
    ref = bench_common.DerppConfig()
    assert list(cfg.strategy) == ["derpp"]
    derpp = cfg.strategy.derpp
    assert (derpp.alpha, derpp.beta, derpp.minibatch_size) == (
        ref.alpha,
        ref.beta,
        ref.minibatch_size,
    )
    assert cfg.buffer.size == ref.buffer_size and cfg.buffer.policy == "reservoir"
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (ref.batch_size, ref.epochs)
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", ref.lr, 0.0, 0.0)
    assert opt.scheduler is None
    s = cfg.scenario
    assert (s.source, s.n_experiences, s.setting) == (
        "mnist",
        bench_common.N_EXPERIENCES,
        "class-il",
    )
    assert s.class_order is None and s.class_order_seed is None  # natural order
    assert not s.normalize and s.crop_padding == 0 and not s.hflip  # inputs x / 255 only
    assert (cfg.backbone.name, cfg.backbone.hidden, cfg.backbone.n_layers) == ("mlp", 100, 2)


def test_handwritten_loop_learns_on_two_experiences(mnist):
    _, matrix, clock, steps = handwritten.train_derpp(mnist, n_exp=2, limit=150, seed=0)
    assert steps == mnist.steps(10, limit=150, n_exp=2) == 300
    assert clock.total > 0 and len(matrix) == 2
    assert matrix[0][0] > 95.0  # 0 vs 1 is easy
    assert matrix[1][1] > 85.0
    # replay keeps experience 0 alive (fine-tuning drops it to ~0 in class-IL)
    assert 40.0 < matrix[1][0] <= 100.0
    assert bench_common.final_avg_acc(matrix) == pytest.approx(sum(matrix[1]) / 2)


def _count_train_forwards(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda m, i, o: calls.append(1) if m.training else None)
    return calls


@pytest.mark.parametrize("fused", [False, True])
def test_ours_and_handwritten_have_the_same_step_structure(make_config, tmp_path, mnist, fused):
    """Per step after the first: 3 forwards of 10 rows (stream, MSE draw, CE draw) apart, or one
    of 30 with the fused forward (as hand-written-joint); 10 inserts."""
    limit = 3
    cfg = make_config(
        "experiment=seq-mnist/derpp-500",
        f"trainer.limit_train_batches={limit}",
        f"trainer.fused_forward={str(fused).lower()}",
    )
    runner = build_runner(cfg, tmp_path)
    rows: list[int] = []
    runner.module.backbone.register_forward_hook(
        lambda m, i, o: rows.append(i[0].shape[0]) if m.training else None
    )
    runner.run()
    steps = limit * bench_common.N_EXPERIENCES
    assert runner.module.step_count == steps
    assert rows == [10] + ([30] if fused else [10, 10, 10]) * (steps - 1)
    assert len(runner.module.buffer) == 10 * steps
    assert set(runner.module.buffer.fields) >= {"x", "y", "logits"}

    torch.manual_seed(0)
    calls: list[int] = []
    original = bench_common.build_mlp

    def counting_mlp(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_hook(
            lambda m, i, o: calls.append(i[0].shape[0]) if m.training else None
        )
        return model

    handwritten.build_mlp = counting_mlp
    try:
        _, _, _, hand_steps = handwritten.train_derpp(
            mnist, n_exp=bench_common.N_EXPERIENCES, limit=limit, joint_forward=fused
        )
    finally:
        handwritten.build_mlp = original
    assert hand_steps == steps
    assert calls == rows


def test_profiler_still_finds_the_hot_path_of_the_engine(real_data_dir, monkeypatch):
    """The profile wraps engine functions by name: fail loudly when a refactor renames them."""
    monkeypatch.setenv("CLF_DATA_DIR", str(real_data_dir))
    res = profile_ours.profile(
        [
            "experiment=seq-mnist/derpp-500",
            "trainer.progress_bar=false",
            "trainer.limit_train_batches=4",
        ]
    )
    assert res["steps"] == 4 * bench_common.N_EXPERIENCES
    for label in (
        "Lightning loop",
        "CLModule.training_step (own code)",
        "forward (torch nn)",
        "backward (torch autograd)",
        "optimizer step (torch SGD)",
        "buffer.add",
        "buffer.sample",
        "transform (uint8->float)",
        "strategy derpp.loss_terms",
    ):
        assert res["calls"].get(label, 0) > 0, f"profile_ours no longer times '{label}'"
    assert res["calls"]["buffer.add"] == res["steps"]
    assert not hasattr(torch.Tensor.backward, "__wrapped__")  # class-level patches undone


def test_reservoir_keeps_a_uniform_sample_of_the_stream():
    capacity, stream, trials = 50, 1000, 200
    hits = torch.zeros(stream)
    for trial in range(trials):
        buf = handwritten.Reservoir(capacity, (1,), n_logits=1, seed=trial)
        for start in range(0, stream, 10):
            ids = torch.arange(start, start + 10)
            buf.add(ids.view(-1, 1).to(torch.uint8), ids, ids.float().view(-1, 1))
        assert buf.size == capacity and buf.seen == stream
        hits[buf.y] += 1
        drawn = buf.sample(10)
        assert len(set(drawn.tolist())) == 10  # without replacement
    expected = trials * capacity / stream  # 10 per stream position
    # first vs last tenth of the stream: no position bias (std of each mean ~ 0.3)
    assert abs(hits[:100].mean() - expected) < 1.5
    assert abs(hits[-100:].mean() - expected) < 1.5
    assert hits.sum() == trials * capacity


def test_micro_benchmark_reports_every_cell():
    rows = micro_buffer.bench((200, 2000), (10, 32), min_time_s=0.003)
    assert [(r["capacity"], r["batch"]) for r in rows] == [
        (200, 10),
        (200, 32),
        (2000, 10),
        (2000, 32),
    ]
    assert all(r["add_us"] > 0 and r["sample_us"] > 0 for r in rows)


def test_report_writer_renders_tables(tmp_path):
    bench_run = _load_run_module()
    fake = {
        "name": "x",
        "rc": 0,
        "train_time_s": 2.0,
        "steps": 100,
        "steps_per_s": 50.0,
        "process_wall_s": 3.0,
        "process_cpu_s": 3.0,
        "peak_rss_mib": 900.0,
        "final_avg_acc": 90.0,
        "acc_matrix": [[99.0, 0.0], [90.0, 90.0]],
    }
    rounds = {
        name: [dict(fake, train_time_s=t, train_cpu_s=t)]
        for name, t in zip(bench_run.CONTENDERS, (2.0, 1.6, 1.0, 4.0, 5.0), strict=True)
    }
    ctx = {
        "machine": bench_run.machine_info(1),
        "date": "today",
        "load_start": 0.0,
        "load_end": 0.0,
        "repeats": 1,
        "quick": True,
        "torch_rss": 800.0,
        "rounds": rounds,
        "best": {k: bench_run.best_of(v) for k, v in rounds.items()},
        "micro": {"rows": micro_buffer.bench((200, 2000), (10,), min_time_s=0.003)},
        "profile_ours": None,
        "profile_hand": None,
        "elapsed_s": 1.0,
    }
    out = tmp_path / "RESULTS.md"
    bench_run.write_results(out, ctx)
    text = out.read_text()
    assert "| ours / hand-written | 1.25 | 1.25 | <= 1.3 | yes / yes | " in text
    assert "| ours / avalanche-lean | 0.50 | 0.50 | <= 0.5 | yes / yes |" in text
    assert "CPU:" in text and "Threads: 1" in text
