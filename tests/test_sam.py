"""SAM / SER: modulation, gradient isolation, KL loss, BN modes, saliency targets and configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cl_framework.build import build_runner
from cl_framework.engine.plugin import Batch
from cl_framework.errors import DataError
from cl_framework.saliency import SaliencyTable, image_keys, kl_saliency, normalise_to_sum_one
from cl_framework.saliency.branch import SaliencyBranch
from cl_framework.saliency.targets import to_uint8_maps
from cl_framework.strategies import sam as sam_module
from cl_framework.strategies.signature_probe import class_signature

SITES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _runner(make_config, tmp_path: Path, *overrides: str, strategy: str = "[er_ace,sam]"):
    """seq-digits (8x8), a 4-wide CIFAR ResNet-18, SAM over ER-ACE, targets cached in tmp."""
    cfg = make_config(
        "backbone=resnet18",
        "backbone.width=4",
        f"strategy={strategy}",
        "buffer.size=50",
        "trainer.epochs=1",
        f"strategy.sam.cache_dir={tmp_path / 'cache'}",
        *overrides,
    )
    return build_runner(cfg, tmp_path / "run")


def _sam(runner):
    return next(p for p in runner.module.plugins if p.name == "sam")


def _stream_batch(runner, n: int = 8, experience: int = 0) -> Batch:
    module = runner.module
    x_raw = runner.scenario[experience].train.x[:n]
    y = module.heads.map(runner.scenario[experience].train.y[:n])
    t = torch.full((n,), experience, dtype=torch.long)
    return Batch(x=module.transform.train(x_raw), y=y, t=t, x_raw=x_raw, n_stream=n)


# ------------------------------------------------------------------------------- modulation
@pytest.mark.parametrize("blocks", [[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 1, 0]])
def test_modulation_is_relu_of_product_at_enabled_sites_only(make_config, tmp_path, blocks):
    runner = _runner(make_config, tmp_path, f"strategy.sam.blocks={blocks}")
    module, sam = runner.module, _sam(runner)
    module.eval()
    enabled = {s for s, on in zip(SITES, blocks, strict=True) if on}
    assert set(sam.sites) == enabled
    x = module.transform.to_float(runner.scenario[0].test.x[:6])
    s = sam._eval_features(x)
    modifiers = sam.tap_modifiers(x, "eval")
    assert set(modifiers) == enabled

    # the network by hand: h_k = ReLU(a_k * s_k) where enabled, ReLU(a_k) elsewhere
    bb = module.backbone

    def site(name: str, a: torch.Tensor) -> torch.Tensor:
        if name in enabled:
            torch.testing.assert_close(modifiers[name](a), a * s[name])
            return F.relu(a * s[name])
        return F.relu(a)

    with torch.no_grad():
        h = site("stem", bb.bn1(bb.conv1(x)))
        for name in SITES[1:]:
            stage = getattr(bb, name)
            for block in stage[:-1]:
                h = block(h)
            h = site(name, stage[-1].forward_pre_activation(h))
        expected = module.head(F.adaptive_avg_pool2d(h, 1).flatten(1))
        got = module.run_forward(x, "eval").logits
        plain = module.head(bb(x))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain)  # the modulation does change the output


@pytest.mark.parametrize("mode", ["aggregate", "dwseparable"])
def test_learnable_modulations_train_with_the_classifier(make_config, tmp_path, mode):
    runner = _runner(make_config, tmp_path, f"strategy.sam.mode={mode}")
    module, sam = runner.module, _sam(runner)
    module.eval()
    x = module.transform.to_float(runner.scenario[0].test.x[:4])
    s = sam._eval_features(x)
    mods = sam.tap_modifiers(x, "eval")
    a = torch.randn_like(s["layer2"])
    torch.testing.assert_close(mods["layer2"](a), sam.modulators["layer2"](a, s["layer2"]))
    assert mods["layer2"](a).shape == a.shape
    main = {id(p) for p in module.trainable_parameters()}
    assert all(id(p) in main for p in sam.modulators.parameters())
    assert not any(id(p) in main for p in sam.branch.parameters())


# ------------------------------------------------------------------------ gradient isolation
def test_no_classifier_gradient_reaches_the_saliency_branch(make_config, tmp_path):
    runner = _runner(make_config, tmp_path)
    module, sam = runner.module, _sam(runner)
    module.train()
    step = sam.prepare_batch(_stream_batch(runner))
    out = module.run_forward(step.x, "stream")
    ce = module.classification_loss(step, out)
    kl = sam.loss_terms(step, out)["sal_kl"]
    classifier = list(module.backbone.parameters()) + list(module.head.parameters())
    branch = list(sam.branch.parameters())

    ce.backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in branch)
    assert any(p.grad is not None and p.grad.any() for p in classifier)
    module.zero_grad(set_to_none=True)
    kl.backward()
    assert all(p.grad is None or not p.grad.any() for p in classifier)
    assert any(p.grad is not None and p.grad.any() for p in sam.branch.encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in sam.branch.decoder.parameters())

    # separate optimizers: the main one never holds branch parameters; the saliency one has the
    # encoder group (lr * cnn_lr_factor, cnn weight decay) and the decoder group
    module.begin_experience(0)
    main, saliency = module._optimizers
    main_ids = {id(p) for g in main.param_groups for p in g["params"]}
    assert not main_ids & {id(p) for p in branch}
    enc, dec = saliency.param_groups
    assert {id(p) for p in enc["params"]} == {id(p) for p in sam.branch.encoder.parameters()}
    assert {id(p) for p in dec["params"]} == {id(p) for p in sam.branch.decoder.parameters()}
    cfg = sam.cfg
    assert enc["lr"] == pytest.approx(cfg.lr * cfg.cnn_lr_factor) and dec["lr"] == cfg.lr
    assert enc["weight_decay"] == cfg.cnn_weight_decay
    assert dec["weight_decay"] == cfg.weight_decay
    assert saliency.defaults["momentum"] == cfg.momentum


def test_training_steps_update_both_branches_and_log_the_saliency_loss(make_config, tmp_path):
    runner = _runner(
        make_config,
        tmp_path,
        "scenario.n_experiences=2",
        "scenario.classes_per_experience=null",
        "trainer.limit_train_batches=3",
        "trainer.log_every_n_steps=1",
        "strategy.sam.scheduler=exponential",
        "strategy.sam.scheduler_gamma=0.5",
    )
    module, sam = runner.module, _sam(runner)
    before_enc = [p.detach().clone() for p in sam.branch.encoder.parameters()]
    before_cls = [p.detach().clone() for p in module.backbone.parameters()]
    result = runner.run()
    assert np.isfinite(result.class_il).all()
    assert "train/loss_sal_kl" in module.last_losses
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before_enc, sam.branch.encoder.parameters(), strict=True)
    )
    assert any(
        not torch.equal(a, b) for a, b in zip(before_cls, module.backbone.parameters(), strict=True)
    )
    # exponential schedule: one epoch per experience, two experiences -> lr * 0.5**2
    assert sam.sal_epochs == 2
    assert sam._optimizer.param_groups[1]["lr"] == pytest.approx(sam.cfg.lr * 0.25)
    # checkpoint round trip: branch, modulators and saliency optimizer state come back
    state = module.training_state()
    assert any(k.startswith("plugins.1.branch.decoder") for k in state["model"])
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        for p in sam.branch.parameters():
            p.add_(1.0)
    sam.sal_epochs = 0
    module.load_training_state(state, with_optimizers=True)
    assert sam.sal_epochs == 2
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in saved.items())
    assert sam._optimizer.param_groups[1]["lr"] == pytest.approx(sam.cfg.lr * 0.25)


# --------------------------------------------------------------------------------- KL loss
def test_kl_saliency_loss_on_hand_made_maps():
    eps = torch.finfo(torch.float32).eps
    uniform = torch.full((1, 1, 2, 2), 0.5)
    one_hot = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    assert float(kl_saliency(uniform, one_hot)) == pytest.approx(math.log(4), rel=1e-5)
    assert float(kl_saliency(one_hot * 0.9 + 0.05, one_hot * 0.9 + 0.05)) == pytest.approx(
        0.0, abs=1e-5
    )
    # Q = (1/4, 3/4), P = (1/2, 1/2): 1/4 log(1/2) + 3/4 log(3/2); target scale is irrelevant
    pred = torch.tensor([0.3, 0.3]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(kl_saliency(pred, target)) == pytest.approx(expected, rel=1e-5)
    assert float(kl_saliency(pred, 7 * target)) == pytest.approx(expected, rel=1e-5)
    # batch mean; an all-zero target contributes nothing; uint8 targets work
    zero = torch.zeros_like(one_hot)
    both = kl_saliency(torch.cat([uniform, uniform]), torch.cat([one_hot, zero]))
    assert float(both) == pytest.approx(math.log(4) / 2, rel=1e-5)
    u8 = (one_hot * 255).to(torch.uint8)
    assert float(kl_saliency(uniform, u8)) == pytest.approx(math.log(4), rel=1e-5)
    assert eps < 1e-6
    q = normalise_to_sum_one(torch.tensor([[-1.0, 1.0]]))
    assert q.tolist() == [[0.0, 1.0]]  # negative maps are shifted by their minimum


# ---------------------------------------------------------------------------------- BN modes
def _bn_stats(branch: SaliencyBranch) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in branch.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_saliency_bn_train_mode_on_stream_eval_mode_on_buffer_rows(make_config, tmp_path):
    runner = _runner(make_config, tmp_path)
    module, sam = runner.module, _sam(runner)
    module.train()
    branch = sam.branch
    step = sam.prepare_batch(_stream_batch(runner, n=4))
    replay_x = module.transform.to_float(runner.scenario[1].train.x[:4])
    with torch.no_grad():
        branch.eval()
        _, eval_taps = branch(replay_x)
        branch.train()

    # a replay forward: eval mode, no gradient, running statistics untouched, mode restored
    stats = _bn_stats(branch)
    mods = sam.tap_modifiers(replay_x, "replay")
    for site in sam.sites:
        s = mods[site](torch.ones_like(eval_taps[site]))  # multiply: returns s itself
        torch.testing.assert_close(s, eval_taps[site])
        assert not s.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(branch), strict=True))
    assert branch.training

    # an ER-style stream batch (4 stream rows + 4 appended buffer rows): stream rows run in
    # train mode (statistics move, loss defined), appended rows get the eval-mode features
    x = torch.cat([step.x, replay_x])
    mods = sam.tap_modifiers(x, "stream")
    assert not all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(branch), strict=True))
    assert sam._loss is not None and sam._loss.requires_grad
    assert branch.training
    with torch.no_grad():  # (eval features use the statistics the stream pass just updated)
        branch.eval()
        _, eval_taps = branch(replay_x)
        branch.train()
    s = mods["layer4"](torch.ones((8, *eval_taps["layer4"].shape[1:])))
    torch.testing.assert_close(s[4:], eval_taps["layer4"])
    assert not s.requires_grad  # detached for the classifier

    # evaluation role: eval mode, no loss
    sam._loss = None
    stats = _bn_stats(branch)
    sam.tap_modifiers(replay_x, "eval")
    assert sam._loss is None and all(
        torch.equal(a, b) for a, b in zip(stats, _bn_stats(branch), strict=True)
    )


def test_frozen_branch_has_no_optimizer_no_loss_and_fixed_statistics(make_config, tmp_path):
    runner = _runner(make_config, tmp_path, "strategy.sam.frozen=true")
    module, sam = runner.module, _sam(runner)
    module.train()
    assert sam.table is None and sam.configure_optimizers() == []
    assert not any(p.requires_grad for p in sam.branch.parameters())
    step = sam.prepare_batch(_stream_batch(runner))
    stats = _bn_stats(sam.branch)
    out = module.run_forward(step.x, "stream")
    assert sam.loss_terms(step, out) == {}
    assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(sam.branch), strict=True))
    assert not sam.branch.training


# ----------------------------------------------------------------------------------- targets
def test_spectral_residual_maps_are_cached_and_reused(make_config, tmp_path, monkeypatch):
    runner = _runner(make_config, tmp_path)
    sam = _sam(runner)
    images = torch.cat([exp.train.x for exp in runner.scenario])
    n_unique = len(torch.unique(image_keys(images)))
    assert sam.targets_computed == n_unique > 0
    assert len(list((tmp_path / "cache").glob("spectral_residual-*.pt"))) == 1
    maps = sam.table.lookup(images[:16])
    assert maps.shape == (16, 1, 8, 8) and maps.dtype == torch.uint8
    assert int(maps.flatten(1).max(1).values.min()) == 255  # scaled to a maximum of 255
    q = normalise_to_sum_one(maps)
    torch.testing.assert_close(q.sum(1), torch.ones(16))

    def fail(x):
        raise AssertionError("spectral residual recomputed despite the cache")

    monkeypatch.setattr(sam_module, "spectral_residual_maps", fail)
    second = _sam(_runner(make_config, tmp_path, "seed=5"))
    assert second.targets_computed == 0
    assert torch.equal(second.table.lookup(images[:16]), maps)


def test_maps_follow_the_augmentation_of_their_image(make_config, tmp_path):
    runner = _runner(make_config, tmp_path, "scenario.crop_padding=3", "scenario.hflip=true")
    module, sam = runner.module, _sam(runner)
    images = torch.cat([exp.train.x for exp in runner.scenario])
    sam.table = SaliencyTable(image_keys(images), images)  # each image is its own map
    step = sam.prepare_batch(_stream_batch(runner, n=32))
    maps = sam._pending.maps  # float in [0, 1] after the joint transform
    torch.testing.assert_close(step.x, maps, atol=1e-6, rtol=0)
    raw = module.transform.to_float(step.x_raw)
    assert not torch.allclose(step.x, raw)  # the rows were indeed cropped / flipped


def test_teacher_targets_run_the_checkpoint_once(make_config, tmp_path):
    runner = _runner(make_config, tmp_path)
    teacher = _sam(runner).branch
    path = tmp_path / "teacher.pt"
    torch.save({"model_state_dict": teacher.state_dict()}, path)
    teacher_args = ("strategy.sam.targets=teacher", f"strategy.sam.teacher_checkpoint={path}")
    runner = _runner(make_config, tmp_path, *teacher_args)
    sam = _sam(runner)
    x = runner.scenario[0].train.x[:5]
    teacher.eval()
    with torch.no_grad():
        expected = to_uint8_maps(teacher(runner.module.transform.to_float(x))[0])
    assert sam.targets_computed > 0
    assert (sam.table.lookup(x).int() - expected.int()).abs().max() <= 1
    again = _sam(_runner(make_config, tmp_path, *teacher_args))
    assert again.targets_computed == 0


def test_disk_targets_in_the_official_layout(make_config, tmp_path):
    root = tmp_path / "ds"
    gen = np.random.default_rng(0)
    expected: dict[bytes, np.ndarray] = {}
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("n01", "n02", "n03", "n04"):
            (root / "images" / split / cls).mkdir(parents=True)
            for i in range(n):
                img = gen.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(img).save(root / "images" / split / cls / f"im{i}.png")
                if split == "train":
                    (root / "annotations" / split / cls).mkdir(parents=True, exist_ok=True)
                    sal = np.zeros((16, 16), dtype=np.uint8)
                    sal[2 * i : 2 * i + 4, :] = 200  # maps at another size: resized to 8x8
                    Image.fromarray(sal).save(root / "annotations" / split / cls / f"im{i}.png")
                    small = Image.fromarray(sal).resize((8, 8), Image.Resampling.LANCZOS)
                    expected[img.tobytes()] = np.asarray(small)
    runner = _runner(
        make_config,
        tmp_path,
        "scenario.source=imagefolder",
        f"+scenario.source_options.root={root / 'images'}",
        "+scenario.source_options.channels=1",
        "scenario.n_experiences=2",
        "strategy.sam.targets=disk",
        f"strategy.sam.targets_root={root}",
    )
    sam = _sam(runner)
    assert sam.targets_computed == 24
    images = torch.cat([exp.train.x for exp in runner.scenario])
    maps = sam.table.lookup(images)
    for img, m in zip(images, maps, strict=True):
        want = expected[img[0].numpy().tobytes()].astype(np.float32)
        want = np.round(want / want.max() * 255)
        assert np.abs(m[0].numpy().astype(np.float32) - want).max() <= 1


# ------------------------------------------------------------------------- probe and configs
def test_signature_probe_patches_training_images_and_sam_follows(make_config, tmp_path):
    overrides = ("scenario.n_experiences=2", "trainer.limit_train_batches=2")
    runner = _runner(
        make_config,
        tmp_path,
        *overrides,
        "strategy.signature_probe.patch_size=3",
        strategy="[er_ace,signature_probe,sam]",
    )
    probe = runner.module.plugins[1]
    exp = runner.scenario[0]
    split = probe.train_data(exp, exp.train)
    label = int(exp.train.y[0])
    pattern, r, c = class_signature(label, (1, 8, 8), 3, 0)
    assert torch.equal(split.x[0, :, r : r + 3, c : c + 3], pattern)
    assert not torch.equal(split.x, exp.train.x)
    result = runner.run()  # SAM finds the clean images' maps for the patched rows
    assert np.isfinite(result.class_il).all()
    # the wrong order cannot find maps for patched images, and says why
    wrong = _runner(
        make_config,
        tmp_path / "wrong",
        *overrides,
        "strategy.signature_probe.patch_size=3",
        strategy="[er_ace,sam,signature_probe]",
    )
    with pytest.raises(DataError, match="must come before 'sam'"):
        wrong.run()


@pytest.mark.parametrize("dataset", ["seq-miniimagenet", "seq-fg-imagenet"])
@pytest.mark.parametrize("name", ["erace-sam-2000", "derpp-sam-2000", "erace-2000"])
def test_online_paper_configs_compose_and_stop_at_the_data(make_config, tmp_path, dataset, name):
    cfg = make_config(f"experiment={dataset}/{name}", f"paths.data_dir={tmp_path}")
    assert cfg.trainer.batch_size == 8 and cfg.trainer.epochs == 1
    assert list(cfg.scenario.source_options.size) == [288, 384]
    if "sam" in name:
        assert cfg.strategy.sam.targets == "disk" and cfg.strategy.sam.lr == 0.005
    with pytest.raises(DataError):
        build_runner(cfg, tmp_path / "run")


def test_fashion_mnist_sam_experiment_runs_end_to_end(make_config, tmp_path, real_data_dir):
    cfg = make_config(
        "experiment=seq-fashion-mnist/derpp-sam-500",
        f"paths.data_dir={real_data_dir}",
        f"strategy.sam.cache_dir={tmp_path / 'cache'}",
        "scenario.source_options.max_train_per_class=10",
        "scenario.source_options.max_test_per_class=5",
    )
    assert list(cfg.strategy) == ["derpp", "sam"] and cfg.backbone.name == "reduced_resnet18"
    runner = build_runner(cfg, tmp_path / "run")
    assert runner.scenario.input_shape == (1, 32, 32)
    assert [len(e.train) for e in runner.scenario] == [20] * 5
    result = runner.run()
    assert np.isfinite(result.class_il).all() and _sam(runner).targets_computed == 100
    for name in ("erace-500", "erace-sam-500", "derpp-500"):
        assert make_config(f"experiment=seq-fashion-mnist/{name}").buffer.size == 500
