"""Auxiliary stream and head manager: greedy assignment, bindings, relabelling, buffer filter,
evaluation over all heads, FWT after the mapping, exact resume of the mapping, configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_framework.build import build_runner
from cl_framework.engine.checkpoint import load_checkpoint
from cl_framework.engine.heads import HeadManager, greedy_assignment
from cl_framework.engine.plugin import Batch
from cl_framework.errors import ConfigError, DataError, RunInterrupted
from cl_framework.evaluation.report import build_metrics
from cl_framework.run_config import validate_run_config
from cl_framework.strategies.auxiliary import OWNER
from cl_framework.strategies.registry import build_strategies
from cl_framework.train import run as train_run
from tests.conftest import CONF_DIR, compose_config

LIMIT = 20  # training batches per experience in the short real runs
FAULT = "extra_modules=[tests.fault_injection]"


# ------------------------------------------------------------------ head manager (unit)
def test_greedy_assignment_takes_largest_counts_with_row_major_ties():
    counts = torch.tensor(
        [
            [5, 9, -1, 2],
            [9, 1, -1, 7],
            [0, 0, -1, 3],
        ]
    )
    # 9 at (0, 1) and (1, 0): the first in row-major order wins -> class 0 -> head 1; then
    # class 1 -> head 0 (9); class 2 keeps the larger of its remaining columns -> head 3.
    assert greedy_assignment(counts) == [1, 0, 3]
    # tie inside a row: the lower head; all-zero rows still get a free head
    assert greedy_assignment(torch.tensor([[4, 4, -1], [1, 0, -1]])) == [0, 1]
    assert greedy_assignment(torch.tensor([[0, -1, 0], [0, -1, 0]])) == [0, 2]
    with pytest.raises(ValueError, match="cannot assign 3 classes to 2 free heads"):
        greedy_assignment(torch.tensor([[1, -1, 2], [3, -1, 4], [5, -1, 6]]))


def test_most_activated_counts_only_free_heads_and_errors_when_too_many_classes():
    heads = HeadManager(6)
    heads.release()
    heads.assign_in_order([0, 1])  # heads 0, 1
    targets = torch.tensor([2, 2, 2, 3, 3, 3, 3])
    predictions = torch.tensor([0, 4, 4, 4, 4, 5, 0])  # head 0 is taken: never counted
    counts = heads.activation_counts([2, 3], targets, predictions)
    assert counts.tolist() == [[-1, -1, 0, 0, 2, 0], [-1, -1, 0, 0, 2, 1]]
    chosen = heads.assign_most_activated([2, 3], targets, predictions)
    assert chosen.tolist() == [4, 5]  # tie on head 4: the first class row wins it
    assert heads.label_to_head[[0, 1, 2, 3]].tolist() == [0, 1, 4, 5]
    assert heads.free_heads().tolist() == [2, 3]
    with pytest.raises(ValueError, match="cannot assign 3 classes to 2 free heads"):
        heads.assign_most_activated([4, 5, 0], targets, predictions)
    with pytest.raises(ValueError, match="cannot assign 3 classes to 2 free heads"):
        heads.assign_random([4, 5, 0], torch.Generator().manual_seed(0))


def test_bindings_random_draw_in_order_and_state_round_trip():
    heads = HeadManager(4, n_extra_heads=2)
    heads.release()
    # more auxiliary classes than heads: a seeded random draw of distinct classes
    a = heads.bind_classes("aux", 12, generator=torch.Generator().manual_seed(3))
    other = HeadManager(4, n_extra_heads=2)
    other.release()
    b = other.bind_classes("aux", 12, generator=torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 6 and max(a.tolist()) < 12
    # equal counts: in order
    in_order = HeadManager(4, n_extra_heads=2)
    in_order.release()
    assert in_order.bind_classes("aux", 6).tolist() == list(range(6))
    fewer = HeadManager(6)
    fewer.release()
    with pytest.raises(ValueError, match="has 5 classes but 6 heads"):
        fewer.bind_classes("aux", 5)
    # assigning a label to a bound head ends its binding
    heads.assign([2], [5])
    bound_heads, _ = heads.bindings("aux")
    assert bound_heads.tolist() == [0, 1, 2, 3, 4]
    table = heads.class_to_head("aux", 12)
    assert table[a[0]].item() == 0 and table[a[5]].item() == -1
    with pytest.raises(ValueError, match="assigned to a dataset label"):
        heads.bind("dream", [5], [0])
    with pytest.raises(ValueError, match="bound by 'aux'"):
        heads.bind("dream", [0], [0])
    heads.unbind("aux", [0])
    heads.bind("dream", [0], [7])
    assert "head 0: free, dream class 7" in heads.summary()
    assert "head 5: label 2" in heads.summary()
    # the whole state (assignment, bindings) survives a round trip
    restored = HeadManager(4, n_extra_heads=2)
    restored.load_state_dict(heads.state_dict())
    assert restored.state_dict()["bound_owner"] == heads.state_dict()["bound_owner"]
    assert torch.equal(restored.state_dict()["bound_class"], heads.state_dict()["bound_class"])
    assert torch.equal(restored.assigned, heads.assigned)
    assert torch.equal(restored.label_to_head, heads.label_to_head)
    # an unassigned label maps to its positional head; a v1 state means "all assigned"
    assert heads.map(torch.tensor([0, 2])).tolist() == [0, 5]
    legacy = HeadManager(4, n_extra_heads=2)
    legacy.load_state_dict({"n_classes": 4, "n_heads": 6, "label_to_head": torch.arange(4)})
    assert bool(legacy.assigned.all()) and legacy.free_heads().tolist() == [4, 5]


# ------------------------------------------------------------------- configs and errors
def _aux_overrides(data_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=future-seq-mnist/derpp-aux-200",
        f"paths.data_dir={data_dir}",
        f"trainer.limit_train_batches={LIMIT}",
        *extra,
    ]


@pytest.mark.parametrize("dataset", ["future-seq-mnist", "future-seq-cifar10"])
def test_experiment_configs_compose_and_validate(dataset):
    names = sorted(p.stem for p in (CONF_DIR / "experiment" / dataset).glob("[!_]*.yaml"))
    expected = ["derpp-200", "derpp-500", "derpp-aux-200", "derpp-aux-500"]
    if dataset == "future-seq-mnist":  # + the related-auxiliary setting (MNIST halves)
        expected = sorted([*expected, "derpp-half-500", "derpp-aux-half-500"])
    assert names == expected
    for name in names:
        cfg = compose_config([f"experiment={dataset}/{name}"])
        rc = validate_run_config(cfg)
        plugins = build_strategies(rc.strategy)
        assert [p.name for p in plugins] == (["derpp", "auxiliary"] if "aux" in name else ["derpp"])
        assert rc.buffer.size == int(name[-3:])
        assert rc.optimizer.lr == 0.03


def test_future_seq_cifar10_fails_only_at_the_data_step(tmp_path):
    cfg = compose_config(
        [
            "experiment=future-seq-cifar10/derpp-aux-500",
            f"paths.data_dir={tmp_path}",
            "+scenario.source_options.download=false",
        ]
    )
    with pytest.raises(DataError) as info:
        build_runner(cfg, tmp_path / "run")
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "data_batch_1" in message
    assert "test_batch" in message and "batches.meta" in message


def test_missing_dataset_key_and_bad_values_fail_before_data(tmp_path):
    with pytest.raises(ConfigError, match=r"strategy\.auxiliary\.dataset': is required"):
        build_runner(compose_config(["strategy=[derpp,auxiliary]"]), tmp_path)
    with pytest.raises(ConfigError, match=r"strategy\.auxiliary\.dataset': unknown auxiliary"):
        build_runner(
            compose_config(["strategy=[derpp,auxiliary]", "strategy.auxiliary.dataset=fmnist"]),
            tmp_path,
        )
    with pytest.raises(ConfigError, match=r"strategy\.auxiliary\.aux_ratio"):
        build_runner(
            compose_config(
                ["experiment=future-seq-mnist/derpp-aux-500", "strategy.auxiliary.aux_ratio=half"]
            ),
            tmp_path,
        )


def test_missing_auxiliary_files_name_the_files(tmp_path, real_data_dir):
    only_mnist = tmp_path / "data"
    only_mnist.mkdir()
    (only_mnist / "mnist").symlink_to(real_data_dir / "mnist")
    cfg = compose_config(_aux_overrides(only_mnist, "+strategy.auxiliary.options.download=false"))
    with pytest.raises(DataError) as info:
        build_runner(cfg, tmp_path / "run")
    message = str(info.value)
    assert "fashion-mnist" in message and "train-images-idx3-ubyte" in message


def test_too_few_auxiliary_classes_names_add_aux_classes(tmp_path, real_data_dir):
    cfg = compose_config(_aux_overrides(real_data_dir, "strategy.auxiliary.add_aux_classes=2"))
    with pytest.raises(ConfigError, match=r"add_aux_classes': 'fashion-mnist' has 10 classes"):
        build_runner(cfg, tmp_path)


# ------------------------------------------------------------- relabelling, evaluation
@pytest.fixture(scope="module")
def built(tmp_path_factory, real_data_dir):
    """A built (untrained) DER++ + auxiliary run with experience 0 assigned."""
    runner = build_runner(
        compose_config(_aux_overrides(real_data_dir)), tmp_path_factory.mktemp("built")
    )
    plugin = runner.module.plugins[1]
    plugin.assign_heads(runner.scenario[0])
    return runner, plugin


def test_auxiliary_rows_are_relabelled_to_their_free_heads(built):
    runner, plugin = built
    heads = runner.module.heads
    bound_heads, bound_classes = heads.bindings(OWNER)
    assert bound_heads.tolist() == list(range(2, 10))  # heads 0, 1 went to experience 0
    assert bound_classes.tolist() == list(range(2, 10))  # Fashion-MNIST: bound in order
    source = plugin.sources[0]
    pool = plugin.pool()
    # every image of a bound class, labelled with its head; none of the dropped classes 0, 1
    expected = torch.bincount(source.train_y, minlength=10)[2:].tolist()
    assert torch.bincount(pool.heads, minlength=10)[2:].tolist() == expected
    assert int((pool.heads < 2).sum()) == 0
    first = int((source.train_y == 7).nonzero()[0])
    row = int((pool.heads == 7).nonzero()[0])
    assert torch.equal(pool.x[row], source.train_x[first])  # class 7 -> head 7, same image
    # mixing=union (default, the reference's one loader): the experience's rows + every pool row
    exp0 = runner.scenario[0]
    union = plugin.train_data(exp0, exp0.train)
    n_own = len(exp0.train)
    assert union.n_own == n_own and len(union) == n_own + len(pool.heads)
    assert bool((union.head[:n_own] == -1).all()) and torch.equal(union.head[n_own:], pool.heads)
    assert torch.equal(union.x[:n_own], exp0.train.x) and torch.equal(union.x[n_own:], pool.x)
    x = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    y = torch.zeros(10, dtype=torch.long)
    batch = Batch(x=x.float(), y=y, t=y, x_raw=x, n_stream=10)
    assert plugin.prepare_batch(batch) is batch  # a union appends nothing per step
    # mixing=append: ratio * n_stream rows after the stream rows, heads of free classes
    plugin.cfg = dataclasses.replace(plugin.cfg, mixing="append")
    try:
        out = plugin.prepare_batch(batch)
        k = round(len(pool.heads) / len(exp0.train) * 10)
        assert out.n_stream == 10 and len(out.y) == 10 + k and k > 10
        assert set(out.y[10:].tolist()) <= set(range(2, 10))
        again = plugin.prepare_batch(batch)  # same position in the epoch: the same rows
        assert torch.equal(again.y, out.y) and torch.equal(again.x, out.x)
    finally:
        plugin.cfg = dataclasses.replace(plugin.cfg, mixing="union")


def test_class_il_evaluation_counts_auxiliary_head_predictions_as_errors(built):
    runner, _ = built
    module = runner.module
    exp0 = runner.scenario[0]
    frac_0 = float((exp0.test.y == 0).float().mean()) * 100
    saved = {k: v.clone() for k, v in module.head.state_dict().items()}
    try:
        with torch.no_grad():
            module.head.weight.zero_()
            module.head.bias.zero_()
            module.head.bias[5] = 1.0  # head 5: free, bound to an auxiliary class
        row = runner.evaluate()
        assert row.class_il[0] == 0.0  # every prediction lands on an auxiliary head
        assert row.task_il[0] == pytest.approx(frac_0)  # task-IL: heads {0, 1} only
        with torch.no_grad():
            module.head.bias.zero_()
            module.head.bias[0] = 1.0
        assert runner.evaluate().class_il[0] == pytest.approx(frac_0)
    finally:
        module.head.load_state_dict(saved)


# ------------------------------------------------------------------------ short real runs
@pytest.fixture(scope="module")
def short_run(tmp_path_factory, real_data_dir):
    """DER++ + auxiliary, LIMIT batches per experience; records the mapping at each evaluation."""
    out = tmp_path_factory.mktemp("short")
    cfg = compose_config(_aux_overrides(real_data_dir, FAULT, "+strategy._fault={}"))
    runner = build_runner(cfg, out)
    records: list[dict] = []
    evaluate = runner.evaluate

    def recording_evaluate():
        row = evaluate()
        records.append({**runner.module.heads.state_dict(), "class_il": row.class_il})
        return row

    runner.evaluate = recording_evaluate
    step_batch = runner.module.step_batch
    own_rows: list[int] = []

    def recording_step_batch(batch):
        step = step_batch(batch)
        own_rows.append(step.n_stream)
        return step

    runner.module.step_batch = recording_step_batch
    result = runner.run()
    runner.module.own_rows = own_rows
    return cfg, runner, result, records


def test_auxiliary_samples_never_enter_the_buffer(short_run):
    _, runner, _, _ = short_run
    buffer = runner.module.buffer
    n_steps = runner.module.step_count
    assert n_steps == 5 * LIMIT
    # batches of 10 drawn from the union of MNIST + bound Fashion-MNIST rows: only the MNIST
    # rows of each step were offered (experience 0 is ~20 % MNIST, experience 4 all MNIST)
    own = runner.module.own_rows
    assert len(own) == n_steps and buffer.num_seen == sum(own)
    assert sum(own[:LIMIT]) < LIMIT * 5 and own[-LIMIT:] == [10] * LIMIT
    stored = buffer.all(["x", "y", "logits"])
    assert stored["logits"].shape[1] == runner.module.heads.n_heads  # logits over all heads
    real = {}
    for exp in runner.scenario:
        for x, y in zip(exp.train.x, exp.train.y, strict=True):
            real[x.numpy().tobytes()] = int(y)
    table = runner.module.heads.label_to_head
    for x, y in zip(stored["x"].cpu(), stored["y"].cpu(), strict=True):
        label = real.get(x.numpy().tobytes())
        assert label is not None, "a stored image is not an MNIST training image"
        assert int(table[label]) == int(y)  # stored with the head of its real class


def test_fwt_is_measured_after_the_mapping(short_run):
    _, runner, result, records = short_run
    scenario = runner.scenario
    final = runner.module.heads.state_dict()
    assert len(records) == 1 + scenario.n_experiences  # random init + one row per experience
    # the random-init evaluation: experience 0 assigned (heads 0, 1), nothing else
    assert records[0]["assigned"].tolist() == [True, True] + [False] * 8
    for i in range(scenario.n_experiences - 1):
        rec, nxt = records[1 + i], list(scenario[i + 1].classes)
        assert bool(rec["assigned"][nxt].all()), f"row {i}: experience {i + 1} not mapped"
        assert rec["label_to_head"][nxt].tolist() == final["label_to_head"][nxt].tolist()
        assert rec["class_il"] == list(result.class_il[i])
    metrics = build_metrics(
        result, scenario="seq-mnist", setting="class-il", strategies=[], seed=0, config={}
    )
    b = result.random_init.class_il
    expected = np.mean([result.class_il[j - 1][j] - b[j] for j in range(1, 5)])
    assert metrics["fwt"]["class_il"] == pytest.approx(expected, abs=1e-3)
    # class-IL accuracy is argmax over all heads against the mapped label
    module = runner.module
    exp = scenario[2]
    pred = module.predict_logits(exp.test.x.to(module.device)).argmax(1).cpu()
    acc = float((pred == final["label_to_head"][exp.test.y]).float().mean()) * 100
    assert acc == pytest.approx(result.class_il[-1][2], abs=1e-3)


def test_mapping_restored_from_checkpoint_and_resume_is_exact(
    short_run, tmp_path, real_data_dir, monkeypatch
):
    cfg, reference, result, _ = short_run
    broken = tmp_path / "broken"
    monkeypatch.setenv("CLF_FAULT", "interrupt")
    monkeypatch.setenv("CLF_FAULT_STEP", str(2 * LIMIT + 7))  # inside experience 3
    with pytest.raises(RunInterrupted):
        train_run(cfg, broken)
    monkeypatch.delenv("CLF_FAULT")
    saved = load_checkpoint(broken)["training"]["heads"]
    assert saved["assigned"].tolist() == [True] * 6 + [False] * 4  # experiences 1..3 mapped
    assert saved["bound_owner"].count(OWNER) == 4
    # a rebuilt run gets the checkpointed mapping back
    rebuilt = build_runner(cfg, tmp_path / "rebuilt")
    rebuilt.load_checkpoint_payload(load_checkpoint(broken), "ckpt")
    state = rebuilt.module.heads.state_dict()
    assert torch.equal(state["label_to_head"], saved["label_to_head"])
    assert state["bound_owner"] == saved["bound_owner"]
    # resuming finishes with the uninterrupted run's mapping and results
    resumed = train_run(
        compose_config(
            _aux_overrides(real_data_dir, FAULT, "+strategy._fault={}", f"resume={broken}")
        ),
        broken,
    )
    np.testing.assert_allclose(resumed["acc_matrix"]["class_il"], result.class_il, atol=1e-3)
    np.testing.assert_allclose(resumed["acc_matrix"]["task_il"], result.task_il, atol=1e-3)
    final = load_checkpoint(broken)["training"]["heads"]
    assert torch.equal(final["label_to_head"], reference.module.heads.label_to_head)
    assert json.loads((broken / "metrics.json").read_text())["fwt"] == resumed["fwt"]


@pytest.mark.parametrize("base", ["er", "er_ace"])
def test_composes_with_er_and_er_ace_without_storing_auxiliary_rows(base, tmp_path, real_data_dir):
    cfg = compose_config(
        [
            "scenario=seq-mnist",
            f"strategy=[{base},auxiliary]",
            "strategy.auxiliary.dataset=fashion-mnist",
            "strategy.auxiliary.aux_batch_size=7",
            "strategy.auxiliary.mixing=append",
            f"paths.data_dir={real_data_dir}",
            "trainer.limit_train_batches=3",
            "trainer.epochs=1",
            "trainer.batch_size=10",
            "buffer.size=20",
        ]
    )
    runner = build_runner(cfg, tmp_path)
    seen_rows: list[int] = []
    plugin = runner.module.plugins[1]
    prepare = plugin.prepare_batch

    def recording_prepare(batch: Batch) -> Batch:
        out = prepare(batch)
        seen_rows.append(len(out.y) - len(batch.y))
        return out

    plugin.prepare_batch = recording_prepare
    runner.run()
    assert seen_rows[:3] == [7, 7, 7] and seen_rows[-1] == 0  # no free head left at the end
    assert runner.module.buffer.num_seen == runner.module.step_count * 10
