"""WSCL (issue 9): freezing depths, candidate selection, isolation of candidates, STM -> LTM,
synaptic plasticity, configs."""

from __future__ import annotations

import pytest
import torch

from cl_framework.backbones.resnet import reduced_resnet18
from cl_framework.build import build_runner
from cl_framework.errors import DataError
from cl_framework.run_config import validate_run_config
from cl_framework.strategies.registry import build_strategies
from cl_framework.strategies.wscl import (
    FREEZABLE_BLOCKS,
    WSCL,
    apply_freezing,
    candidate_depths,
    frozen_units,
    plasticity_step,
    select_candidate,
)
from tests.conftest import CONF_DIR, compose_config


def _trainable_units(backbone) -> set[str]:
    names = {"stem": ["conv1", "bn1"], **{b: [b] for b in FREEZABLE_BLOCKS}}
    names.update({"layer4": ["layer4"]})
    out = set()
    for unit, mods in names.items():
        params = [p for m in mods for p in backbone.get_submodule(m).parameters()]
        if all(p.requires_grad for p in params):
            out.add(unit)
        else:
            assert not any(p.requires_grad for p in params), f"{unit} partly frozen"
    return out


@pytest.mark.parametrize("depth", range(len(FREEZABLE_BLOCKS) + 1))
def test_exact_blocks_frozen_per_candidate_depth(depth):
    backbone = reduced_resnet18((1, 32, 32))
    apply_freezing(backbone, depth)
    frozen = set(frozen_units(depth))
    expected = [] if depth == 0 else ["stem", *FREEZABLE_BLOCKS[:depth]]
    assert sorted(frozen) == sorted(expected)
    all_units = {"stem", *FREEZABLE_BLOCKS, "layer4"}
    assert _trainable_units(backbone) == all_units - frozen
    assert "layer4" in _trainable_units(backbone)  # layer4 never frozen


def test_candidates_continue_from_the_accumulated_depth():
    assert candidate_depths(0) == [0, 1, 2, 3, 4, 5, 6]
    # after depth 2 was adopted: candidate 0 keeps it, candidate i freezes i more blocks
    assert candidate_depths(2) == [2, 3, 4, 5, 6]
    assert candidate_depths(6) == [6]
    assert candidate_depths(1, max_candidates=3) == [1, 2, 3]
    backbone = reduced_resnet18((1, 32, 32))
    apply_freezing(backbone, 2)
    apply_freezing(backbone, 4)  # accumulation: a deeper depth only adds frozen blocks
    assert _trainable_units(backbone) == {"layer3.0", "layer3.1", "layer4"}


def test_selection_picks_the_lowest_loss():
    assert select_candidate([0.9, 0.3, 0.5]) == 1
    assert select_candidate([0.4, 0.4, 0.7]) == 0  # ties: first


def test_plasticity_changes_only_the_chosen_fraction_in_the_documented_direction():
    torch.manual_seed(0)
    w = torch.randn(10, 20).abs() + 0.1
    before = w.clone()
    scores = torch.rand(10, 20)
    changed = plasticity_step([w], [scores], fraction=0.1, strength=0.5)
    assert changed == 40
    diff = (w != before).reshape(-1)
    assert int(diff.sum()) == 40
    order = scores.reshape(-1).argsort()
    top, bottom = order[-20:], order[:20]
    flat_w, flat_b = w.reshape(-1), before.reshape(-1)
    assert torch.allclose(flat_w[top], flat_b[top] * 1.5)  # strengthened
    assert torch.allclose(flat_w[bottom], flat_b[bottom] * 0.5)  # weakened
    assert diff[top].all() and diff[bottom].all()


def test_plasticity_on_channels_last_conv_weights_matches_contiguous():
    """``trainer.channels_last`` (auto on CPU for conv nets) stores conv weights NHWC: the
    step must change the same logical weights (it used to fail on ``view(-1)``)."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    scores = torch.rand(8, 4, 3, 3)
    nhwc = w.clone().contiguous(memory_format=torch.channels_last)
    nchw = w.clone()
    plasticity_step([nchw], [scores], fraction=0.1, strength=0.5)
    plasticity_step([nhwc], [scores.contiguous(memory_format=torch.channels_last)], 0.1, 0.5)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc, nchw, rtol=0, atol=0)


# ------------------------------------------------------------- with a real (tiny) run
def _tiny(tmp_path, real_data_dir, *extra):
    cfg = compose_config(
        [
            "scenario=seq-mnist",
            "backbone=reduced_resnet18",
            "strategy=[er_ace,wscl]",
            "strategy.wscl.dream=false",
            "strategy.wscl.val_size=20",
            "strategy.wscl.freeze_buffer_size=10",
            "scenario.max_train_per_class=30",
            "buffer.size=50",
            "trainer.epochs=1",
            "trainer.batch_size=10",
            f"paths.data_dir={real_data_dir}",
            *extra,
        ]
    )
    return build_runner(cfg, tmp_path / "run")


def _wscl(module) -> WSCL:
    return next(p for p in module.plugins if isinstance(p, WSCL))


def test_candidates_leave_model_and_buffer_untouched_and_planted_loss_is_adopted(
    tmp_path, real_data_dir, monkeypatch
):
    runner = _tiny(tmp_path, real_data_dir, "strategy.wscl.max_candidates=3")
    module, scenario = runner.module, runner.scenario
    plugin = _wscl(module)
    module.call_plugins("assign_heads", scenario[0])
    plugin.before_experience(scenario[0])
    split = module.fold_plugins("train_data", scenario[0].train, scenario[0])
    assert len(split) == 2 * (30 - 10)  # 20 held out per class at the first experience
    runner._train_experience(0, split, 0)
    plugin.frozen_depth = 1  # as if depth 1 had been adopted before: candidates go on from it
    apply_freezing(module.backbone, 1)
    assert plugin.freeze_x is not None and len(plugin.freeze_x) == 10
    module.experience_index = 1
    before = {k: v.clone() for k, v in module.state_dict().items()}
    buffer_before = module.buffer.state_dict()
    seen: dict[int, dict] = {}

    def fake_score(candidate):
        # candidates are trained, the main model and buffer are not (yet)
        after = module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert module.buffer.num_seen == buffer_before["num_seen"]
        assert candidate.buffer.num_seen > module.buffer.num_seen
        depth = _wscl(candidate).frozen_depth
        seen[depth] = {k: v.clone() for k, v in candidate.state_dict().items()}
        return {1: 0.9, 2: 0.1, 3: 0.5}[depth]

    monkeypatch.setattr(plugin, "score", fake_score)
    plugin.before_experience(scenario[1])
    assert sorted(seen) == [1, 2, 3]
    assert plugin.frozen_depth == 2 and plugin.last_selection["chosen"] == 2
    adopted = module.state_dict()
    assert all(torch.equal(adopted[k], seen[2][k]) for k in seen[2])
    assert module.buffer.num_seen > buffer_before["num_seen"]  # the candidate's buffer
    assert _trainable_units(module.backbone) == {
        "layer2.0",
        "layer2.1",
        "layer3.0",
        "layer3.1",
        "layer4",
    }
    # the trial epoch counts as epoch 0: the main training continues with epoch 1
    assert module.epoch_in_experience == 1 and runner._resume_mid_experience
    state = plugin.plugin_state()
    assert state["frozen_depth"] == 2


def test_stm_to_ltm_consolidation(tmp_path, real_data_dir):
    runner = _tiny(tmp_path, real_data_dir, "strategy.wscl.nrem=true", "strategy.wscl.stm_size=8")
    plugin = _wscl(runner.module)
    x = torch.arange(12 * 784, dtype=torch.float32).reshape(12, 1, 28, 28).to(torch.uint8)
    y, t = torch.arange(12) % 2, torch.zeros(12, dtype=torch.long)
    plugin.stm_add(x=x, y=y, t=t)
    assert len(plugin.stm["y"]) == 8 and plugin.stm_seen == 12  # reservoir of capacity 8
    buffer = runner.module.buffer
    assert buffer.is_empty
    stm_x = plugin.stm["x"].clone()
    assert plugin.consolidate() == 8
    assert len(buffer) == 8 and not plugin.stm
    stored = buffer.all(["x"])["x"]
    assert sorted(map(bytes, stored.numpy())) == sorted(map(bytes, stm_x.numpy()))


def test_paper_mode_sleep_restores_ltm_then_consolidates_stm(tmp_path, real_data_dir):
    runner = _tiny(
        tmp_path,
        real_data_dir,
        "strategy.wscl.nrem=true",
        "strategy.wscl.stm_size=15",
        "strategy.wscl.plasticity_fraction=0.05",
        "strategy.wscl.plasticity_strength=0.1",
    )
    module, scenario = runner.module, runner.scenario
    plugin = _wscl(module)
    module.call_plugins("assign_heads", scenario[0])
    plugin.before_experience(scenario[0])  # snapshot of the (empty) LTM
    train = scenario[0].train
    x, y = train.x[:20], module.heads.map(train.y[:20])
    t = torch.zeros(20, dtype=torch.long)
    module.buffer.add(x=x, y=y, t=t)  # what the engine offers to the buffer during wake
    plugin.stm_add(x=x, y=y, t=t)
    weights = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    plugin.after_experience(scenario[0])
    # LTM = its pre-wake state + the consolidated STM (15 rows), STM emptied
    assert module.buffer.num_seen == 15 and len(module.buffer) == 15 and not plugin.stm
    after = module.backbone.state_dict()
    assert any(not torch.equal(weights[k], after[k]) for k in weights)  # NREM trained


@pytest.mark.parametrize("name", ["erace-wscl-500", "erace-wscl-paper-500"])
def test_fashion_configs_compose(name):
    cfg = compose_config([f"experiment=seq-fashion-mnist/{name}"])
    rc = validate_run_config(cfg)
    plugins = build_strategies(rc.strategy)
    assert [p.name for p in plugins] == ["er_ace", "wscl"]
    assert plugins[1].cfg.nrem == ("paper" in name)


DREAM = ["dream-seq-cifar10", "dream-seq-tinyimagenet-half", "dream-seq-fg-imagenet"]


def test_dream_configs_compose():
    names = [
        f"{d}/{p.stem}" for d in DREAM for p in (CONF_DIR / "experiment" / d).glob("[!_]*.yaml")
    ]
    assert len(names) == 6
    for name in names:
        rc = validate_run_config(compose_config([f"experiment={name}"]))
        assert [p.name for p in build_strategies(rc.strategy)] == ["er_ace", "wscl"]
        assert rc.optimizer.lr == 0.03 and rc.trainer.epochs == 10


def test_dream_seq_cifar10_fails_only_at_the_data_step(tmp_path):
    cfg = compose_config(
        [
            "experiment=dream-seq-cifar10/erace-wscl-500",
            f"paths.data_dir={tmp_path}",
            "+scenario.source_options.download=false",
        ]
    )
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        build_runner(cfg, tmp_path / "run")


def test_derpp_base_consolidation_computes_stored_logits(tmp_path, real_data_dir):
    runner = _tiny(tmp_path, real_data_dir, "strategy=[derpp,wscl]", "strategy.wscl.nrem=true")
    module = runner.module
    plugin = _wscl(module)
    train = runner.scenario[0].train
    x, y, t = train.x[:4], train.y[:4], torch.zeros(4, dtype=torch.long)
    module.buffer.add(x=x, y=y, t=t, logits=torch.zeros(4, module.heads.n_heads))
    plugin.stm_add(x=train.x[4:10], y=train.y[4:10], t=torch.zeros(6, dtype=torch.long))
    assert plugin.consolidate() == 6
    logits = module.buffer.all(["logits"])["logits"]
    assert len(logits) == 10 and bool((logits[4:] != 0).any())


def test_reference_adoption_keeps_the_buffer_and_takes_only_the_winners_weights(
    tmp_path, real_data_dir, monkeypatch
):
    """``adopt: weights`` (the reference copies ``net.state_dict()``): the buffer does not
    receive the trial epoch's rows; backbone + head are the winner's."""
    runner = _tiny(
        tmp_path, real_data_dir, "strategy.wscl.max_candidates=2", "strategy.wscl.adopt=weights"
    )
    module, scenario = runner.module, runner.scenario
    plugin = _wscl(module)
    module.call_plugins("assign_heads", scenario[0])
    plugin.before_experience(scenario[0])
    runner._train_experience(
        0, module.fold_plugins("train_data", scenario[0].train, scenario[0]), 0
    )
    module.experience_index = 1
    seen_before = module.buffer.num_seen
    winners: dict[int, dict] = {}

    def fake_score(candidate):
        depth = _wscl(candidate).frozen_depth
        winners[depth] = {k: v.clone() for k, v in candidate.backbone.state_dict().items()}
        return {0: 0.5, 1: 0.1}[depth]

    monkeypatch.setattr(plugin, "score", fake_score)
    plugin.before_experience(scenario[1])
    assert plugin.frozen_depth == 1
    assert module.buffer.num_seen == seen_before  # the candidates' insertions are discarded
    adopted = module.backbone.state_dict()
    assert all(torch.equal(adopted[k], winners[1][k]) for k in winners[1])


def test_reference_scoring_is_train_mode_batch_means_rounded(tmp_path, real_data_dir):
    """``score_mode: train, score_decimals: 2``: the reference's freezing score updates the
    candidate's BatchNorm statistics and is a multiple of 0.01; eval mode changes nothing."""
    runner = _tiny(tmp_path, real_data_dir)
    module, scenario = runner.module, runner.scenario
    plugin = _wscl(module)
    module.call_plugins("assign_heads", scenario[0])
    plugin.before_experience(scenario[0])
    bn = module.backbone.bn1
    stats = bn.running_mean.clone()
    exact = plugin.score(module)
    assert torch.equal(bn.running_mean, stats)  # eval-mode scoring leaves BatchNorm alone
    plugin.cfg.score_mode, plugin.cfg.score_decimals = "train", 2
    rounded = plugin.score(module)
    assert not torch.equal(bn.running_mean, stats)  # train-mode forwards updated the statistics
    assert rounded == round(rounded, 2) and exact != round(exact, 2)
