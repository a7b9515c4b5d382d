"""The defining mechanism of each DER-paper baseline added for the leaderboard breadth:
A-GEM's projection, GEM's QP, the episodic memory both fill, SI's path integral, iCaRL's
herding and nearest-mean classifier, and the engine hooks they need (``fills_buffer``,
``replaces_ce``, ``eval_logits``). Real seq-digits runs where a property needs training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from cl_framework.build import build_runner
from cl_framework.strategies import agem as agem_mod
from cl_framework.strategies.agem import agem_project
from cl_framework.strategies.episodic import flat_grad
from cl_framework.strategies.gem import gem_project
from cl_framework.strategies.icarl import herding_order


# ------------------------------------------------------------------------------ A-GEM
def test_agem_projection_removes_the_conflict_and_keeps_agreeing_gradients():
    gen = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(50):
        g, g_ref = torch.randn(40, generator=gen), torch.randn(40, generator=gen)
        out = agem_project(g, g_ref)
        if torch.dot(g, g_ref) < 0:
            conflicts += 1
            assert abs(float(torch.dot(out, g_ref))) < 1e-4  # projected onto the plane
            # the projection moves g only along g_ref
            residual = (out - g) - torch.dot(out - g, g_ref) / g_ref.dot(g_ref) * g_ref
            assert residual.abs().max() < 1e-5
        else:
            assert torch.equal(out, g)
    assert conflicts > 10


@pytest.mark.parametrize("name", ["agem", "agem_r"])
def test_agem_step_gradient_never_conflicts_with_the_reference(
    make_config, tmp_path, monkeypatch, name
):
    """On a real run, the gradient the optimizer uses has g . g_ref >= 0 at every step
    (A-GEM's episodic memory, and A-GEM-R's reservoir filled by the stream)."""
    dots: list[tuple[float, float]] = []
    original = agem_mod.AGEM.before_optimizer_step

    def recording(self):
        if self.buffer.is_empty:
            return original(self)
        params = self.module.trainable_parameters()
        before = flat_grad(params)
        refs = []
        inner = self.replay_gradient

        def capture(*args):
            refs.append(inner(*args))
            return refs[-1]

        self.replay_gradient = capture
        original(self)
        del self.replay_gradient
        dots.append((float(before @ refs[0]), float(flat_grad(params) @ refs[0])))

    monkeypatch.setattr(agem_mod.AGEM, "before_optimizer_step", recording)
    cfg = make_config(f"experiment=seq-digits/{name}", "trainer.epochs=1")
    runner = build_runner(cfg, tmp_path)
    runner.run()
    if name == "agem_r":  # a reservoir over every stream row, not a per-experience sample
        buffer = runner.module.buffer
        assert runner.module.offers_stream_rows
        assert buffer.num_seen == sum(len(e.train) for e in runner.scenario)
        assert len(buffer) == buffer.capacity
    assert len(dots) > 100
    assert sum(b < 0 for b, _ in dots) > 0, "no conflicting step: the test exercised nothing"
    norms = max(abs(b) for b, _ in dots)
    assert min(a for _, a in dots) >= -1e-4 * norms


# -------------------------------------------------------------------------------- GEM
def test_gem_projection_is_the_closest_non_conflicting_gradient():
    """margin 0, tiny ridge: GEM's dual QP solution equals the primal projection
    argmin ||z - g||^2 s.t. G z >= 0 (solved independently by SLSQP)."""
    rng = np.random.default_rng(0)
    G = rng.normal(size=(4, 12))
    g = -G[0] * 2 + rng.normal(size=12) * 0.3  # conflicts with memory 0
    assert (G @ g < 0).any()
    ours = gem_project(torch.tensor(g), torch.tensor(G), margin=0.0, eps=1e-9).numpy()
    primal = minimize(
        lambda z: 0.5 * ((z - g) ** 2).sum(),
        g,
        jac=lambda z: z - g,
        constraints=[{"type": "ineq", "fun": lambda z: G @ z, "jac": lambda z: G}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    ).x
    assert (G @ ours >= -1e-6).all()
    np.testing.assert_allclose(ours, primal, atol=1e-4)


def test_gem_margin_is_a_floor_on_the_dual_multipliers():
    """Mammoth's margin: g~ = g + G^T v with every v >= margin, and v optimal, so G g~ is
    non-negative up to the ridge (G g~ = grad - eps v, grad >= 0 by optimality)."""
    rng = np.random.default_rng(1)
    G = torch.tensor(rng.normal(size=(5, 30)))
    g = torch.tensor(rng.normal(size=30)) - 3 * G.sum(0) / 5
    assert (G @ g < 0).any()
    out = gem_project(g, G, margin=0.5, eps=1e-3)
    v = torch.linalg.lstsq(G.T, (out - g).unsqueeze(1)).solution.squeeze(1)
    assert (v >= 0.5 - 1e-8).all()
    assert (G @ out >= -1e-3 * v - 1e-9).all()
    plain = gem_project(g, G, margin=0.0, eps=1e-3)
    assert (out - g).norm() > (plain - g).norm()  # the margin adds memory gradient


def test_gem_fills_an_episodic_memory_not_a_reservoir(make_config, tmp_path):
    """fills_buffer: the engine offers no stream rows; each finished experience leaves
    buffer.size // n_experiences of its own samples, tagged with its task label."""
    cfg = make_config("experiment=seq-digits/gem", "trainer.epochs=1")
    runner = build_runner(cfg, tmp_path)
    result = runner.run()
    assert not runner.module.offers_stream_rows
    memory = runner.module.buffer.all(["y", "t"])
    assert len(memory["t"]) == 5 * (200 // 5)
    heads = runner.module.heads
    for i, exp in enumerate(runner.scenario):
        rows = memory["t"] == exp.task_label
        assert int(rows.sum()) == 40
        allowed = heads.heads_of(exp.classes).tolist()
        assert set(memory["y"][rows].tolist()) <= set(allowed), i
    assert result.class_il[-1].mean() > 60.0


# --------------------------------------------------------------------------------- SI
def test_si_path_integral_and_importance_by_hand(make_config, tmp_path):
    """Driven by hand on the real plug-in: with plain SGD, omega = lr * sum(g^2) (Mammoth's
    form), and Omega = omega / ((theta - theta0)^2 + xi) at experience end."""
    cfg = make_config("experiment=seq-digits/si", "strategy.si.xi=0.5")
    runner = build_runner(cfg, tmp_path)
    si = runner.module.plugins[0]
    params = si._params()
    theta0 = {k: p.detach().clone() for k, p in params.items()}
    lr = 0.05
    gen = torch.Generator().manual_seed(0)
    expected = {k: torch.zeros_like(p) for k, p in params.items()}
    for _ in range(3):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=gen) * 2  # some entries get clipped at 1
        si.before_optimizer_step()
        with torch.no_grad():
            for k, p in params.items():
                assert p.grad.abs().max() <= 1.0
                expected[k] += lr * p.grad**2
                p -= lr * p.grad
        si.after_train_step(None, None)
    for k in params:
        torch.testing.assert_close(si.omega[k], expected[k])
    si.after_experience(runner.scenario[0])
    for k, p in params.items():
        want = expected[k] / ((p.detach() - theta0[k]) ** 2 + 0.5)
        torch.testing.assert_close(si.big_omega[k], want)
        torch.testing.assert_close(si.anchor[k], p.detach())
    assert si.omega == {}


# ------------------------------------------------------------------------------ iCaRL
def test_herding_picks_by_running_mean_by_hand():
    # mean 3: first pick the row closest to 3 (2.9), then the one making the running mean
    # closest to 3: (2.9 + 3.2) / 2 = 3.05 beats (2.9 + 0) / 2 and (2.9 + 9) / 2
    feats = torch.tensor([[0.0, 1.0], [2.9, 1.0], [9.0, 1.0], [3.2, 1.0], [-0.1, 1.0]])
    order = herding_order(feats, 3).tolist()
    assert order[:2] == [1, 3]
    assert len(set(order)) == 3


def test_icarl_classifies_by_the_nearest_exemplar_mean(make_config, tmp_path):
    cfg = make_config("experiment=seq-digits/icarl", "trainer.epochs=1")
    runner = build_runner(cfg, tmp_path)
    result = runner.run()
    module = runner.module
    icarl = module.plugins[0]
    assert "ce" not in module.last_losses and "train/loss_icarl_bce" in module.last_losses
    memory = module.buffer.all(["x", "y"])
    counts = torch.bincount(memory["y"], minlength=module.heads.n_heads)
    assert (counts[counts > 0] == 200 // 10).all() and int((counts > 0).sum()) == 10
    # independent NME: class means of exemplar features, squared distances, argmin
    module.eval()
    with torch.no_grad():
        feats = module.backbone(module.transform.to_float(memory["x"]))
        means = torch.stack([feats[memory["y"] == h].mean(0) for h in range(10)])
        x = runner.scenario[2].test.x[:64]
        f = module.backbone(module.transform.to_float(x))
        by_hand = ((f[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    predicted = module.predict_logits(x).argmax(1)
    assert torch.equal(predicted, by_hand)
    assert icarl.class_means().shape[0] == module.heads.n_heads
    assert result.class_il[-1].mean() > 60.0


@pytest.mark.parametrize("capacity", [3])
def test_episodic_memory_refuses_a_buffer_smaller_than_the_experiences(
    make_config, tmp_path, capacity
):
    from cl_framework.errors import ConfigError

    cfg = make_config("experiment=seq-digits/agem", f"buffer.size={capacity}")
    with pytest.raises(ConfigError, match=r"buffer\.size"):
        build_runner(cfg, tmp_path).run()


@pytest.mark.parametrize("benchmark", ["seq-mnist", "perm-mnist", "rot-mnist"])
def test_every_baseline_config_validates(make_config, benchmark):
    """Each DER-paper config (Mammoth best args) composes, and its strategy hyper-parameters
    pass the plug-ins' schemas (a mistyped key or a wrong type fails here, not mid-sweep)."""
    from cl_framework.strategies.registry import build_strategies
    from tests.conftest import CONF_DIR

    names = sorted(p.stem for p in (CONF_DIR / "experiment" / benchmark).glob("[!_]*.yaml"))
    assert len(names) >= 10
    for name in names:
        cfg = make_config(f"experiment={benchmark}/{name}")
        plugins = build_strategies(cfg.strategy)
        assert plugins, name
        if benchmark != "seq-mnist":
            assert cfg.scenario.setting == "domain-il" and cfg.scenario.n_experiences == 20
            assert cfg.trainer.batch_size == 128 and cfg.trainer.epochs == 1


def test_icarl_replays_exemplars_only_when_asked(make_config, tmp_path):
    """replay_exemplars: the paper's training set is new data + exemplars; false gives the
    new data only (Mammoth's 2020 code, whose begin_task is never called)."""
    for replay, extra in ((True, 200), (False, 0)):
        cfg = make_config(
            "experiment=seq-digits/icarl",
            "trainer.epochs=1",
            "scenario.n_experiences=5",
            f"strategy.icarl.replay_exemplars={str(replay).lower()}",
        )
        runner = build_runner(cfg, tmp_path / str(replay))
        runner.run()
        icarl = runner.module.plugins[0]
        exp = runner.scenario[4]
        data = icarl.train_data(exp, exp.train)
        assert len(data) == len(exp.train) + extra
