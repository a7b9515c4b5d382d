"""FDR, MER and GDumb: the baselines whose update is not one optimizer step on the stream
batch, and the engine parts they use (``CLModule.extra_step``, ``trains_on_stream``).
Mechanisms by hand, memory statistics and step counts on real seq-digits runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cl_framework.build import build_runner
from cl_framework.engine.module import CLModule
from cl_framework.strategies.fdr import function_distance
from cl_framework.strategies.gdumb import GDumb
from cl_framework.strategies.gss import gss_score
from cl_framework.strategies.mer import flat_params, reptile_update


def _count_extra_steps(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = CLModule.extra_step

    def counting(self, loss):
        calls.append(self.step_count)
        return original(self, loss)

    monkeypatch.setattr(CLModule, "extra_step", counting)
    return calls


# -------------------------------------------------------------------------------- FDR
def test_function_distance_by_hand():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    p = 1 / (1 + torch.exp(torch.tensor(-1.0)))  # softmax([1, 0])[0]
    # row 0: identical outputs; row 1: (p, 1-p) vs (1-p, p) -> sqrt(2) * |2p - 1|
    expected = (2**0.5 * abs(2 * p - 1)) / 2
    assert torch.isclose(function_distance(a, b), expected)


def test_fdr_memory_is_balanced_by_experience_with_logits_of_its_end(
    make_config, tmp_path, monkeypatch
):
    """buffer.size // n_finished rows per experience, each with the logits the network gave
    it when its experience ended; one extra (function-distance) step per step with memory."""
    calls = _count_extra_steps(monkeypatch)
    cfg = make_config("experiment=seq-digits/fdr", "trainer.epochs=1")
    runner = build_runner(cfg, tmp_path)
    runner.run()
    module = runner.module
    assert not module.offers_stream_rows
    memory = module.buffer.all(["x", "y", "logits", "exp"])
    assert memory["exp"].bincount().tolist() == [40] * 5  # 200 // 5 finished experiences
    for exp in runner.scenario:
        rows = memory["exp"] == exp.index
        assert set(memory["y"][rows].tolist()) <= set(module.heads.heads_of(exp.classes).tolist())
    fdr = module.plugins[0]
    now = fdr.memory_logits(memory["x"])
    last = memory["exp"] == 4
    assert torch.allclose(now[last], memory["logits"][last], atol=1e-5)  # stored at its end
    assert not torch.allclose(now[~last], memory["logits"][~last], atol=1e-2)  # older ones
    steps_per_exp = module.step_count // 5
    assert len(calls) == module.step_count - steps_per_exp  # every step after experience 0


# -------------------------------------------------------------------------------- MER
def test_reptile_update_by_hand():
    layer = nn.Linear(2, 1)
    params = list(layer.parameters())
    start = flat_params(params)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    reptile_update(params, start, 0.25)
    assert torch.allclose(flat_params(params), start + 0.25)


def test_mer_with_unit_rates_and_one_draw_is_er(make_config, tmp_path):
    """beta = gamma = 1, batch_num = 1: one step on stream + replay draw, exactly ER's step
    (same draws from the same buffer generator), so the runs are identical."""
    common = ("trainer.epochs=1", "trainer.batch_size=10", "buffer.size=200", "seed=3")
    mer = build_runner(
        make_config(
            "experiment=seq-digits/mer",
            *common,
            "strategy.mer.beta=1.0",
            "strategy.mer.gamma=1.0",
            "strategy.mer.batch_num=1",
            "strategy.mer.minibatch_size=32",
        ),
        tmp_path / "mer",
    ).run()
    er = build_runner(
        make_config("experiment=seq-digits/er", *common, "strategy.er.minibatch_size=32"),
        tmp_path / "er",
    ).run()
    assert mer.class_il.tolist() == er.class_il.tolist()


def test_mer_takes_batch_num_steps_and_interpolates(make_config, tmp_path, monkeypatch):
    """batch_num inner steps per stream batch (the first is the engine's step); the
    across-batch Reptile update puts the parameters at theta_A + gamma (theta - theta_A),
    theta the inner steps' result, at every step of a real run."""
    from cl_framework.strategies.mer import MER

    inner: list[torch.Tensor] = []
    original_extra = CLModule.extra_step

    def extra(self, loss):
        original_extra(self, loss)
        inner.append(flat_params(self.trainable_parameters()))

    gaps: list[float] = []
    original_after = MER.after_train_step

    def after(self, batch, out):
        theta_a = self._start.clone()
        original_after(self, batch, out)
        expected = theta_a + 0.5 * (inner[-1] - theta_a)
        gaps.append(float((flat_params(self.module.trainable_parameters()) - expected).abs().max()))

    monkeypatch.setattr(CLModule, "extra_step", extra)
    monkeypatch.setattr(MER, "after_train_step", after)
    cfg = make_config(
        "experiment=seq-digits/mer",
        "trainer.epochs=1",
        "strategy.mer.batch_num=3",
        "strategy.mer.beta=1.0",
        "strategy.mer.gamma=0.5",
    )
    runner = build_runner(cfg, tmp_path)
    runner.run()
    assert len(inner) == 2 * runner.module.step_count
    assert len(gaps) == runner.module.step_count and max(gaps) < 1e-6


# ------------------------------------------------------------------------------ GDumb
def test_gdumb_learns_only_from_a_balanced_buffer(make_config, tmp_path, monkeypatch):
    """The stream never changes the weights (each fit starts from the previous fit's result
    and is reset to the run's initial weights); the memory ends class-balanced."""
    starts: list[torch.Tensor] = []
    ends: list[torch.Tensor] = []
    original_fit = GDumb.fit

    def fit(self, seed):
        starts.append(flat_params(self.module.trainable_parameters()))
        original_fit(self, seed)
        ends.append(flat_params(self.module.trainable_parameters()))

    monkeypatch.setattr(GDumb, "fit", fit)
    cfg = make_config("experiment=seq-digits/gdumb", "strategy.gdumb.epochs=3")
    runner = build_runner(cfg, tmp_path)
    initial = flat_params(runner.module.trainable_parameters())
    result = runner.run()
    assert len(starts) == 5
    assert torch.equal(starts[0], initial)  # experience 0's stream steps left it untouched
    for before, after_previous in zip(starts[1:], ends[:-1], strict=True):
        assert torch.equal(before, after_previous)
    gdumb = runner.module.plugins[0]
    gdumb.reset_network()
    assert torch.equal(flat_params(runner.module.trainable_parameters()), initial)
    counts = runner.module.buffer.all(["y"])["y"].bincount()
    assert counts.tolist() == [20] * 10  # 200 slots over 10 seen classes
    assert result.class_il[-1].mean() > 50.0  # three epochs on the memory already learn


# -------------------------------------------------------------------------------- GSS
def test_gss_score_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    memory = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # row 0: cosines 0 and -1 -> 1 + 0; row 1: cosines 1 and 0 -> 1 + 1
    assert gss_score(g, memory).tolist() == [1.0, 2.0]


def test_gss_keeps_only_rows_whose_gradients_point_away(make_config, tmp_path, monkeypatch):
    """Full memory: a batch whose gradient agrees with a memory gradient (score >= 1) changes
    nothing; a batch pointing away from all of them replaces slots, each new row with its own
    score. On the real run the memory filled up with scores in [0, 2]."""
    runner = build_runner(make_config("experiment=seq-digits/gss", "trainer.epochs=1"), tmp_path)
    runner.run()
    buffer, gss = runner.module.buffer, runner.module.plugins[0]
    assert len(buffer) == buffer.capacity == 200
    scores = buffer.all(["gss_score"])["gss_score"]
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 2.0
    split = runner.scenario[0].train
    x, y = split.x[:7], runner.module.heads.map(split.y[:7])  # 7 rows: not the memory's 10
    t = torch.zeros_like(y)
    before = {k: v.clone() for k, v in buffer.all(["x", "gss_score"]).items()}
    width = sum(p.numel() for p in runner.module.trainable_parameters())
    e1 = torch.zeros(width)
    e1[0] = 1.0

    def aligned(x_raw, labels, per_row):
        return e1.expand(len(labels) if per_row else 1, width).clone()

    monkeypatch.setattr(gss, "_grads", aligned)
    gss.insert(x, y, t)
    after = buffer.all(["x", "gss_score"])
    assert torch.equal(after["x"], before["x"])

    def opposed(x_raw, labels, per_row):
        if per_row and len(labels) == min(gss.cfg.gss_minibatch_size, len(buffer)):
            return e1.expand(len(labels), width).clone()  # the memory sample
        return (-e1).expand(len(labels) if per_row else 1, width).clone()

    monkeypatch.setattr(gss, "_grads", opposed)
    gss.insert(x, y, t)
    after = buffer.all(["x", "gss_score"])
    changed = (after["x"] != before["x"]).flatten(1).any(1)
    assert 1 <= int(changed.sum()) <= 7
    assert torch.all(after["gss_score"][changed] == 0.0)  # 1 + cos(-e1, e1)
    offered = {tuple(r.flatten().tolist()) for r in x}
    assert all(tuple(r.flatten().tolist()) in offered for r in after["x"][changed])


# -------------------------------------------------------------------------------- HAL
def test_hal_redoes_the_step_from_the_old_weights_with_the_anchor_term(
    make_config, tmp_path, monkeypatch
):
    """With anchors, every step ends at theta_t - lr (g_ce + g_anchor): the task gradient at
    theta_t plus the gradient, also at theta_t, of hal_lambda * mean (f_theta'(e) - f(e))^2,
    theta' the weights after the plain ER step. Checked against an independent copy of the
    network at every step of a real run; one anchor per class of each experience."""
    import copy

    from cl_framework.strategies.hal import HAL

    gaps: list[float] = []
    original = HAL.after_train_step

    def after(self, batch, out):
        if self.anchors is None:
            return original(self, batch, out)
        module = self.module
        params = module.trainable_parameters()
        theta_t = self._before.clone()
        g_ce = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        anchors = self.anchors
        with torch.no_grad():
            moved = module.run_forward(anchors).logits
        original(self, batch, out)
        net = nn.Sequential(copy.deepcopy(module.backbone), copy.deepcopy(module.head))
        reptile_update(list(net.parameters()), theta_t, 0.0)
        loss = self.cfg.hal_lambda * (moved - net(anchors)).pow(2).mean()
        g_anchor = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, net.parameters())])
        lr = module.optimizer_config.lr
        expected = theta_t - lr * (g_ce + g_anchor)
        gaps.append(float((flat_params(params) - expected).abs().max()))

    monkeypatch.setattr(HAL, "after_train_step", after)
    runner = build_runner(make_config("experiment=seq-digits/hal", "trainer.epochs=1"), tmp_path)
    runner.run()
    hal = runner.module.plugins[0]
    image = tuple(runner.scenario[0].train.x.shape[1:])
    assert hal.anchors is not None and tuple(hal.anchors.shape) == (10, *image)  # 2 per exp.
    assert len(gaps) > 0 and max(gaps) < 1e-5


# -------------------------------------------------------------------------------- PNN
def test_pnn_columns_freeze_and_connect(make_config, tmp_path):
    """Old columns are frozen and evaluated by their own column, so no task-IL accuracy ever
    drops; with laterals, a later column reads the earlier ones (perturbing column 0 moves
    column 1's output), without them (Mammoth's 2020 behaviour) it does not."""
    outputs = {}
    for lateral in (True, False):
        cfg = make_config(
            "experiment=seq-digits/pnn", f"strategy.pnn.lateral={str(lateral).lower()}"
        )
        runner = build_runner(cfg, tmp_path / str(lateral))
        result = runner.run()
        til = np.asarray(result.task_il)
        for j in range(5):  # column j's accuracy on experience j never changes after row j
            assert np.all(til[j:, j] == til[j, j]), (lateral, j)
        pnn = runner.module.plugins[0]
        assert len(pnn.frozen) == 4
        x = runner.module.transform.to_float(runner.scenario[1].test.x[:32])
        before = pnn.eval_forward(x, 1).logits.clone()
        with torch.no_grad():
            for p in pnn.frozen[0].parameters():
                p.add_(0.5)
        moved = float((pnn.eval_forward(x, 1).logits - before).abs().max())
        outputs[lateral] = moved
    assert outputs[True] > 1e-3 and outputs[False] == 0.0


def test_pnn_refuses_class_il(make_config, tmp_path):
    from cl_framework.errors import ConfigError

    cfg = make_config("experiment=seq-digits/pnn", "scenario.setting=class-il")
    with pytest.raises(ConfigError, match=r"scenario\.setting"):
        build_runner(cfg, tmp_path).run()
