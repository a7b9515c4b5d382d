"""Engine: plug-in dispatch and composition, the training step, heads, evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cl_framework.build import build_runner
from cl_framework.engine.heads import HeadManager
from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.strategies import register_strategy


@register_strategy
class _TermA(StrategyPlugin):
    """Adds loss ``1.0 * p_a`` through a parameter trained by the main optimizer."""

    name = "_test_term_a"

    @dataclass
    class Config:
        weight: float = 1.0

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.p = nn.Parameter(torch.ones(1))
        self.calls = 0

    def main_parameters(self):
        return [self.p]

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        self.calls += 1
        return {f"{self.name}_term": self.cfg.weight * self.p.sum()}


@register_strategy
class _TermB(_TermA):
    name = "_test_term_b"


def _run_steps(make_config, tmp_path: Path, *overrides: str):
    cfg = make_config(
        "trainer.limit_train_batches=1",
        "trainer.epochs=1",
        "scenario.n_experiences=1",
        "optimizer.lr=0.1",
        *overrides,
    )
    runner = build_runner(cfg, tmp_path)
    runner.run()
    return runner


def test_two_plugins_loss_terms_both_reach_the_gradient(make_config, tmp_path):
    # One SGD step with lr 0.1: d(w*p)/dp = w, so p goes 1 -> 1 - 0.1*w exactly, for each
    # plug-in independently. If either term were dropped, its parameter would stay at 1.
    runner = _run_steps(
        make_config,
        tmp_path,
        "+strategy._test_term_a.weight=1.0",
        "+strategy._test_term_b.weight=2.0",
        "strategy.derpp.alpha=0.5",
    )
    a, b = (p for p in runner.module.plugins if p.name.startswith("_test"))
    assert runner.module.step_count == 1
    assert a.p.item() == pytest.approx(0.9, abs=1e-6)
    assert b.p.item() == pytest.approx(0.8, abs=1e-6)
    assert [p.name for p in runner.module.plugins] == ["derpp", "_test_term_a", "_test_term_b"]


def test_hooks_dispatch_only_to_overriding_plugins(make_config, tmp_path):
    runner = _run_steps(make_config, tmp_path, "strategy=[finetune]", "+strategy._test_term_a={}")
    module = runner.module
    assert [p.name for p in module.hooks("loss_terms")] == ["_test_term_a"]
    assert module.hooks("prepare_batch") == []
    assert module.hooks("buffer_fields") == []
    assert module.buffer is None  # nothing replays: no buffer allocated


def test_derpp_fills_buffer_with_logits_and_composes_with_ewc(make_config, tmp_path):
    cfg = make_config("strategy=[derpp,ewc_on]", "buffer.size=50", "trainer.epochs=1")
    runner = build_runner(cfg, tmp_path)
    runner.run()
    module = runner.module
    buffer = module.buffer
    assert len(buffer) == 50
    assert set(buffer.fields) == {"x", "y", "t", "logits"}
    assert buffer.all()["logits"].shape == (50, 10)
    assert buffer.all()["x"].dtype == torch.uint8
    # reservoir over the whole stream: every experience is represented after five
    assert set(buffer.all()["t"].tolist()) == {0, 1, 2, 3, 4}
    ewc = module.plugins[1]
    assert ewc.fisher and all(bool((f >= 0).all()) for f in ewc.fisher.values())
    logged = module.last_losses
    assert {"train/loss_ce", "train/loss_der_mse", "train/loss_derpp_ce"} <= set(logged)
    assert "train/loss_ewc_penalty" in logged


def test_er_ace_logit_mask_follows_mammoth_rule(make_config, tmp_path):
    runner = build_runner(make_config("strategy=[er_ace]"), tmp_path)
    plugin = runner.module.plugins[0]
    y = torch.tensor([2, 3, 3])
    batch = Batch(x=torch.zeros(3, 1), y=y, t=y // 2, x_raw=torch.zeros(3, 1), n_stream=3)
    runner.module.experience_index = 0
    assert plugin.logit_mask(batch) is None  # no masking on the first experience
    runner.module.experience_index = 1
    mask = plugin.logit_mask(batch)
    # present classes {2, 3}, largest seen 3 -> heads 2..9 visible, 0 and 1 masked
    assert mask.tolist() == [False, False] + [True] * 8
    # once the last head was seen (a dream / auxiliary row on head 9), Mammoth keeps only the
    # present heads: `if seen_so_far.max() < num_classes - 1` opens no columns
    last = Batch(x=torch.zeros(1, 1), y=torch.tensor([9]), t=torch.tensor([4]),
                 x_raw=torch.zeros(1, 1), n_stream=1)  # fmt: skip
    plugin.logit_mask(last)
    mask = plugin.logit_mask(batch)
    assert mask.tolist() == [False, False, True, True] + [False] * 6


def test_head_manager_mapping_and_task_masks():
    heads = HeadManager(4, n_extra_heads=2)
    assert heads.n_heads == 6
    assert heads.map(torch.tensor([0, 3])).tolist() == [0, 3]
    heads.assign([0, 1], [5, 4])
    assert heads.map(torch.tensor([0, 1, 2])).tolist() == [5, 4, 2]
    mask = heads.task_mask([(0, 1), (2, 3)])
    assert mask.tolist() == [
        [False, False, False, False, True, True],
        [False, False, True, True, False, False],
    ]
    with pytest.raises(ValueError, match="share one head"):
        heads.assign([2], [5])
    state = heads.state_dict()
    other = HeadManager(4, n_extra_heads=2)
    other.load_state_dict(state)
    assert other.label_to_head.tolist() == [5, 4, 2, 3]


def test_evaluation_masks_task_il_and_counts_correctly(make_config, tmp_path):
    """A head that always predicts class 9 scores 100% on class 9 only (class-IL) and
    chance-free task-IL is then decided among the experience's own two heads."""
    runner = build_runner(make_config("strategy=[finetune]"), tmp_path)
    module = runner.module
    with torch.no_grad():
        module.head.weight.zero_()
        module.head.bias.copy_(torch.arange(10, dtype=torch.float))  # argmax always 9
    row = runner.evaluate()
    scenario = runner.scenario
    last = scenario[4]
    frac_9 = float((last.test.y == 9).float().mean()) * 100
    assert row.class_il[:4] == [0.0, 0.0, 0.0, 0.0]
    assert row.class_il[4] == pytest.approx(frac_9)
    for j, exp in enumerate(scenario):
        # task-IL: argmax among the experience's heads = its larger class
        frac_hi = float((exp.test.y == max(exp.classes)).float().mean()) * 100
        assert row.task_il[j] == pytest.approx(frac_hi)


def test_task_il_setting_trains_with_task_masked_heads(make_config, tmp_path):
    cfg = make_config("strategy=[finetune]", "scenario.setting=task-il")
    runner = build_runner(cfg, tmp_path)
    result = runner.run()
    # with task-masked training, the heads of other experiences never get positive gradient
    # from a sample, and task-IL accuracy on seen experiences stays high without replay
    assert np.mean(result.task_il[-1]) > 90.0


def test_same_seed_same_result_different_seed_differs(make_config, tmp_path):
    def final(seed: int, sub: str):
        cfg = make_config(f"seed={seed}", "strategy=[derpp]", "trainer.epochs=1")
        return build_runner(cfg, tmp_path / sub).run().class_il

    a, b, c = final(3, "a"), final(3, "b"), final(4, "c")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_max_train_per_class_subsets_training_data_only(make_config, tmp_path):
    full = build_runner(make_config("strategy=[finetune]"), tmp_path / "a").scenario
    small = build_runner(
        make_config("strategy=[finetune]", "scenario.max_train_per_class=7"), tmp_path / "b"
    ).scenario
    for a, b in zip(full, small, strict=True):
        assert torch.bincount(b.train.y).max().item() == 7
        assert set(b.train.y.tolist()) == set(a.classes)
        assert torch.equal(a.test.x, b.test.x)  # test sets untouched
        # the kept rows are real rows of the full training split
        full_rows = {bytes(r.numpy()) for r in a.train.x}
        assert all(bytes(r.numpy()) in full_rows for r in b.train.x)


def test_clone_is_independent_and_rebinds_plugins(make_config, tmp_path):
    runner = build_runner(make_config("experiment=seq-digits/derpp", "trainer.epochs=1"), tmp_path)
    runner.run()
    module = runner.module
    twin = module.clone()
    plugin, twin_plugin = module.plugins[0], twin.plugins[0]
    assert twin_plugin.module is twin and twin_plugin.buffer is twin.buffer
    assert twin.buffer is not module.buffer and twin.heads is not module.heads
    assert twin_plugin.ctx.scenario is plugin.ctx.scenario  # shared, not copied
    assert twin_plugin.ctx.runner is runner
    before = {k: v.clone() for k, v in module.state_dict().items()}
    buffer_before = module.buffer.all()["x"].clone()
    # train the copy one epoch on the last experience (the WSCL candidate pattern)
    twin.experience_index = 4
    runner.fit(runner.scenario[4].train, 4, epochs=1, module=twin)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(module.buffer.all()["x"], buffer_before)
    assert not torch.equal(twin.head.weight, module.head.weight)
    assert twin.buffer.num_seen > module.buffer.num_seen


def test_steps_per_batch_changes_speed_not_results(make_config, tmp_path):
    def run(k: int):
        cfg = make_config("experiment=seq-digits/derpp", "trainer.epochs=2",
                          f"trainer.steps_per_batch={k}")  # fmt: skip
        runner = build_runner(cfg, tmp_path / str(k))
        result = runner.run()
        return result.class_il, runner.module.step_count

    (a, steps_a), (b, steps_b) = run(1), run(16)
    np.testing.assert_array_equal(a, b)
    assert steps_a == steps_b == 2 * 5 * 27 + 2  # 27 batches/epoch (one experience has 28)


def test_channels_last_and_compile_options_train_to_same_numbers(make_config, tmp_path):
    """Both are pure speed options: same parameters, same forward values (up to float noise)."""
    base = ["strategy=[finetune]", "backbone=reduced_resnet18", "trainer.epochs=1",
            "scenario.n_experiences=1", "trainer.limit_train_batches=3"]  # fmt: skip
    plain = build_runner(make_config(*base, "trainer.channels_last=false"), tmp_path / "a")
    nhwc = build_runner(make_config(*base, "trainer.channels_last=true"), tmp_path / "b")
    assert not plain.module.transform.channels_last
    assert nhwc.module.transform.channels_last
    conv = next(m for m in nhwc.module.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = plain.scenario[0].test.x[:8]
    plain.module.eval()
    nhwc.module.eval()
    torch.testing.assert_close(
        plain.module.predict_logits(x), nhwc.module.predict_logits(x), atol=1e-4, rtol=1e-4
    )
    compiled = build_runner(make_config(*base, "backbone=mlp", "trainer.compile=true"),
                            tmp_path / "c")  # fmt: skip
    eager = build_runner(make_config(*base, "backbone=mlp"), tmp_path / "d")
    compiled.module.eval()
    eager.module.eval()
    torch.testing.assert_close(compiled.module.predict_logits(x), eager.module.predict_logits(x))
    assert compiled.run().class_il.shape == (1, 1)


def test_channels_last_auto_is_on_for_conv_backbones_on_cpu_only(make_config, tmp_path):
    base = ["strategy=[finetune]", "scenario.n_experiences=1", "trainer.accelerator=cpu"]
    conv = build_runner(make_config(*base, "backbone=reduced_resnet18"), tmp_path / "a")
    assert conv.module.transform.channels_last  # auto is the default
    weight = next(m for m in conv.module.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    mlp = build_runner(make_config(*base, "backbone=mlp"), tmp_path / "b")
    assert not mlp.module.transform.channels_last
    with pytest.raises(ConfigError, match=r"trainer\.channels_last.*true, false or auto"):
        build_runner(make_config(*base, "trainer.channels_last=nhwc"), tmp_path / "c")
