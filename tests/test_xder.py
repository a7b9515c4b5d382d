"""X-DER: its loss parts by hand and its memory (class balance, logit updates) on a real
seq-digits run."""

from __future__ import annotations

import math

import pytest
import torch

from cl_framework.build import build_runner
from cl_framework.engine.plugin import Batch, ForwardOutput
from cl_framework.losses import similarity_preserving_loss, supervised_contrastive_loss
from cl_framework.strategies.xder import bounded_transplant, first_occurrence


def test_bounded_transplant_by_hand():
    stored = torch.tensor(
        [[2.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [-1.0, 0, 0, 0]]
    )
    new = torch.tensor(
        [[9.0, 9.0, 4.0, 1.0], [9.0, 9.0, 0.5, 0.2], [0.0, 0.0, 1e-9, -3.0], [0, 0, -2.0, -4.0]]
    )
    target = torch.tensor([0, 0, 0, 0])
    heads = torch.tensor([2, 3])
    out = bounded_transplant(stored, new, target, heads, gamma=0.5)
    # row 0: max 4 > 2 -> Mammoth's scaling by 0.5 * 2 / 4 (max becomes gamma * z = 1)
    assert torch.allclose(out[0], torch.tensor([2.0, 0.0, 1.0, 0.25]))
    # row 1: max 0.5 <= 1 -> copied as is
    assert torch.allclose(out[1], torch.tensor([1.0, 0.0, 0.5, 0.2]))
    # row 2: z = -1 < max ~ 0: Mammoth's scale (0.5 * -1 / 1e-9) would explode; a shift to
    # max = z - (1 - gamma) |z| = -1.5 instead
    assert torch.allclose(out[2], torch.tensor([-1.0, 0.0, -1.5, -4.5]))
    # row 3: max -2 <= z = -1 -> copied as is
    assert torch.allclose(out[3], torch.tensor([-1.0, 0.0, -2.0, -4.0]))
    assert torch.equal(stored[:, 2:], torch.zeros(4, 2))  # input untouched


def test_first_occurrence():
    mask = first_occurrence(torch.tensor([5, 3, 5, 7, 3, 3]))
    assert mask.tolist() == [True, True, False, True, False, False]


def _supcon_by_loops(features, labels, temperature):
    n, views, _ = features.shape
    rows = [(s, v) for v in range(views) for s in range(n)]
    total = torch.zeros(n)
    for s, v in rows:
        z = features[s, v]
        others = [(t, w) for t, w in rows if (t, w) != (s, v)]
        denom = sum(math.exp(float(z @ features[t, w]) / temperature) for t, w in others)
        positives = [(t, w) for t, w in others if labels[t] == labels[s]]
        logs = [float(z @ features[t, w]) / temperature - math.log(denom) for t, w in positives]
        total[s] += -sum(logs) / len(logs) / views
    return total


@pytest.mark.parametrize("labels", [[0, 1, 2], [0, 0, 1]])
def test_supervised_contrastive_loss_by_loops(labels):
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(3, 2, 4, generator=gen), dim=2)
    y = torch.tensor(labels)
    expected = _supcon_by_loops(features, y, temperature=0.5)
    got = supervised_contrastive_loss(features, y, temperature=0.5, reduction="sum")
    assert got == pytest.approx(float(expected.sum()), rel=1e-5)
    mean = supervised_contrastive_loss(features, y, temperature=0.5)
    assert mean == pytest.approx(float(expected.mean()), rel=1e-5)


def test_similarity_preserving_loss_is_zero_for_scaled_features():
    a = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    assert similarity_preserving_loss(a, 3.0 * a) == pytest.approx(0.0, abs=1e-6)
    assert similarity_preserving_loss(a, torch.randn(5, 3)) > 0


@pytest.fixture(scope="module")
def xder_run(tmp_path_factory):
    from tests.conftest import compose_config

    cfg = compose_config(["experiment=seq-digits/xder", "trainer.epochs=1"])
    runner = build_runner(cfg, tmp_path_factory.mktemp("xder"))
    runner.run()
    return runner


def test_xder_memory_is_class_balanced_with_bounded_logits(xder_run):
    module = xder_run.module
    plugin = module.plugins[0]
    assert not module.offers_stream_rows  # fills the buffer itself
    memory = module.buffer.all(["x", "y", "logits", "exp"])
    assert memory["y"].bincount(minlength=10).tolist() == [20] * 10  # 200 // 10 classes
    groups = plugin._groups()
    for exp in xder_run.scenario:
        rows = memory["exp"] == exp.index
        assert groups[exp.index][memory["y"][rows]].all()  # each row in its experience's heads
    truth = memory["logits"].gather(1, memory["y"].view(-1, 1)).squeeze(1)
    last = memory["exp"] == 4
    # the last experience's rows: own heads = the network's output; past heads capped
    now = plugin.memory_logits(memory["x"][last])
    assert torch.allclose(memory["logits"][last][:, groups[4]], now[:, groups[4]], atol=1e-5)
    past = groups[:4].any(0)
    stored_past, now_past = memory["logits"][last][:, past], now[:, past]
    over = now_past.max(1).values > truth[last]
    assert over.any()  # the cap was needed for some rows
    # a capped row's largest past head is z - (1 - gamma) |z| (z: the true-class logit)
    cap = truth[last] - 0.15 * truth[last].abs()
    assert torch.allclose(stored_past.max(1).values[over], cap[over], atol=1e-5)
    assert torch.allclose(stored_past[~over], now_past[~over], atol=1e-5)
    assert (stored_past.max(1).values <= truth[last] + 1e-5).all()
    # older rows: their heads of experience 4 were rewritten at its end, capped the same way
    older = ~last
    assert (memory["logits"][older][:, groups[4]].max(1).values <= truth[older] + 1e-5).all()
    assert torch.isfinite(memory["logits"]).all()


def test_xder_update_during_training_uses_the_draw_counter(xder_run):
    module = xder_run.module
    plugin = module.plugins[0]
    groups = plugin._groups()
    memory = {k: v.clone() for k, v in module.buffer.all(["y", "logits", "exp"]).items()}
    index = torch.arange(len(memory["y"]))
    rows = {**memory, "index": index}
    big = torch.full_like(memory["logits"], 100.0)
    plugin.update_counter.zero_()
    plugin._update_future_past(rows, big, groups, k=4)  # counter 1: every older row updated
    after = module.buffer.all(["logits"])["logits"]
    older = memory["exp"] < 4
    truth = memory["logits"].gather(1, memory["y"].view(-1, 1)).squeeze(1)
    cap = truth[older] - 0.15 * truth[older].abs()
    updated = after[older][:, groups[4]]
    assert torch.allclose(updated.max(1).values, cap, atol=1e-4)  # 100 > z: capped
    positive = truth[older] > 0  # Mammoth's scaling: every transplanted head equals the cap
    assert torch.allclose(
        updated[positive], cap[positive].unsqueeze(1).expand_as(updated[positive])
    )
    assert torch.equal(after[~older], memory["logits"][~older])  # exp-4 rows are not "older"
    assert plugin.update_counter[older].eq(1).all() and plugin.update_counter[~older].eq(0).all()
    # counter 2: each older row is rewritten with probability 1/2
    module.buffer.update(index, logits=memory["logits"])
    plugin._update_future_past(rows, big, groups, k=4)
    changed = (module.buffer.all(["logits"])["logits"] != memory["logits"]).any(1)
    share = changed[older].float().mean().item()
    assert 0.35 < share < 0.65


def test_xder_losses_by_hand(xder_run):
    module = xder_run.module
    plugin = module.plugins[0]
    module.experience_index = 0
    try:
        assert plugin.logit_mask(None).tolist() == [True, True] + [False] * 8
        logits = torch.zeros(2, 10)
        logits[0, :2] = torch.tensor([1.0, 0.0])
        logits[0, 5] = 2.0  # a future head above the own ones: gap 2 + 0.3 - 1
        logits[1, :2] = torch.tensor([3.0, 0.0])  # no violation
        batch = Batch(
            x=torch.zeros(2, 1), y=torch.tensor([0, 1]), t=torch.zeros(2), x_raw=None, n_stream=2
        )
        out = ForwardOutput(logits=logits, features=torch.zeros(2, 1))
        terms = plugin.loss_terms(batch, out)
        assert set(terms) == {"xder_future"}
        assert terms["xder_future"].item() == pytest.approx(0.1 * 1.3)
    finally:
        module.experience_index = 4


def test_xder_refuses_domain_il(make_config, tmp_path):
    from cl_framework.errors import ConfigError

    cfg = make_config(
        "experiment=seq-digits/xder",
        "scenario=perm-mnist",
        "scenario.source_options.base=digits",
        "scenario.n_experiences=2",
    )
    with pytest.raises(ConfigError, match="disjoint classes"):
        build_runner(cfg, tmp_path).run()
