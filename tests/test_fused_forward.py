"""Fused forward: replay side rows (DER / DER++ draws) go through the stream's pass when rows
do not interact, giving the losses of separate passes (to float rounding) with fewer calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl_framework.backbones import build_backbone
from cl_framework.build import build_runner
from cl_framework.engine.module import rows_independent
from cl_framework.engine.plugin import Batch
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """DER++ after two experiences of the embedded digits: a buffer with logits to replay."""
    cfg = compose_config(["strategy=[derpp]", "buffer.size=200", "trainer.epochs=1",
                          "scenario.n_experiences=5"])  # fmt: skip
    runner = build_runner(cfg, tmp_path_factory.mktemp("fused"))
    for i in range(2):
        runner._run_experience(i)
    return runner


def _step(module, scenario) -> Batch:
    split = scenario[2].train
    x_raw, y = split.x[:10], module.heads.map(split.y[:10])
    x = module.transform.to_float(x_raw)
    batch = Batch(x=x, y=y, t=torch.zeros_like(y), x_raw=x_raw, n_stream=len(y))
    sample = module.buffer.sample(12, fields=["x", "y", "logits"])
    xs = module.transform.to_float(sample["x"])
    batch = batch.with_side("der", xs[:6], logits=sample["logits"][:6])
    return batch.with_side("derpp_ce", xs[6:], y=sample["y"][6:])


def test_fused_and_separate_passes_give_the_same_losses_and_gradients(trained):
    module = trained.module
    plugin = module.plugins[0]
    step = _step(module, trained.scenario)
    results = {}
    for fused in (True, False):
        module.fuse_forward, module._fuse_sides = fused, None
        assert module.fuses_side_forwards is fused
        module.zero_grad(set_to_none=True)
        out = module.forward_step(step)
        terms = dict(plugin.loss_terms(step, out))
        terms["ce"] = module.classification_loss(step, out)
        sum(terms.values()).backward()
        grads = [p.grad.clone() for p in module.backbone.parameters()]
        results[fused] = (terms, out, grads)
    (tf, of, gf), (ts, os_, gs) = results[True], results[False]
    assert set(tf) == set(ts) == {"ce", "der_mse", "derpp_ce"}
    for name in tf:
        assert float(tf[name]) == pytest.approx(float(ts[name]), rel=1e-6, abs=1e-7), name
    assert torch.allclose(of.logits, os_.logits, atol=1e-5)
    for name in ("der", "derpp_ce"):
        assert torch.allclose(of.sides[name].logits, os_.sides[name].logits, atol=1e-5)
    for a, b in zip(gf, gs, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    module.fuse_forward, module._fuse_sides = True, None


def test_rows_independent_only_without_batch_statistics_or_dropout():
    assert rows_independent(build_backbone({"name": "mlp"}, (1, 28, 28)))
    assert not rows_independent(build_backbone({"name": "resnet18"}, (3, 32, 32)))
    assert not rows_independent(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)))
    assert rows_independent(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))


def test_batchnorm_backbone_forwards_sides_apart(tmp_path):
    cfg = compose_config(["strategy=[derpp]", "buffer.size=50", "backbone=reduced_resnet18"])
    module = build_runner(cfg, tmp_path).module
    assert not module.fuses_side_forwards
