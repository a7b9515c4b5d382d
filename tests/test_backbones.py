"""Backbone registry, built-in backbones and feature taps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.backbones import (
    Backbone,
    TapContext,
    available_backbones,
    build_backbone,
    register_backbone,
)
from cl_framework.errors import ConfigError

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
RESNET_TAPS = ("stem", "layer1", "layer2", "layer3", "layer4")


def _build(name: str, shape: tuple[int, int, int], **params: object) -> Backbone:
    torch.manual_seed(0)
    return build_backbone({"name": name, **params}, shape)


def _input(shape: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", [MNIST, CIFAR])
@pytest.mark.parametrize(
    ("name", "dim"), [("mlp", 100), ("resnet18", 512), ("reduced_resnet18", 160)]
)
def test_builtin_output_shape(name: str, dim: int, shape: tuple[int, int, int]) -> None:
    backbone = _build(name, shape)
    assert backbone.feature_dim == dim
    assert backbone(_input(shape)).shape == (2, dim)


def test_builtins_are_registered() -> None:
    assert {"mlp", "resnet18", "reduced_resnet18"} <= set(available_backbones())


def test_mlp_matches_der_paper() -> None:
    mlp = _build("mlp", MNIST)
    n_params = sum(p.numel() for p in mlp.parameters())
    assert n_params == 784 * 100 + 100 + 100 * 100 + 100
    # Mammoth's xavier init: zero biases, uniform weights within the xavier bound.
    first = mlp.layers[0]
    assert torch.all(first.bias == 0)
    bound = (6 / (784 + 100)) ** 0.5
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.9 * bound
    assert _build("mlp", MNIST, hidden=32, n_layers=3).tap_names == ("fc1", "fc2", "fc3")


def test_resnet_width_and_stride_layout() -> None:
    net = _build("resnet18", CIFAR, width=8)
    assert net.feature_dim == 64
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    # Any spatial size works thanks to adaptive pooling.
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 64)
    assert net(torch.randn(2, 3, 64, 48)).shape == (2, 64)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("mlp", MNIST, {"fc1": (2, 100), "fc2": (2, 100)}),
        (
            "resnet18",
            CIFAR,
            {
                "stem": (2, 64, 32, 32),
                "layer1": (2, 64, 32, 32),
                "layer2": (2, 128, 16, 16),
                "layer3": (2, 256, 8, 8),
                "layer4": (2, 512, 4, 4),
            },
        ),
        (
            "reduced_resnet18",
            MNIST,
            {
                "stem": (2, 20, 28, 28),
                "layer1": (2, 20, 28, 28),
                "layer2": (2, 40, 14, 14),
                "layer3": (2, 80, 7, 7),
                "layer4": (2, 160, 4, 4),
            },
        ),
    ],
)
def test_recorded_taps_are_pre_activation(
    name: str, shape: tuple[int, int, int], expected: dict[str, tuple[int, ...]]
) -> None:
    backbone = _build(name, shape)
    assert backbone.tap_names == tuple(expected)
    taps = TapContext(record=True)
    features = backbone(_input(shape), taps)
    assert list(taps.records) == list(expected)
    assert {k: tuple(v.shape) for k, v in taps.records.items()} == expected
    for tensor in taps.records.values():
        assert (tensor < 0).any()  # pre-activation, not post-ReLU
    last = taps.records[backbone.tap_names[-1]]
    pooled = F.relu(last).flatten(2).mean(-1) if last.dim() == 4 else F.relu(last)
    torch.testing.assert_close(pooled, features)


def test_record_subset_and_no_taps_is_identical() -> None:
    net = _build("reduced_resnet18", CIFAR).eval()
    x = _input(CIFAR)
    taps = TapContext(record=["layer2"])
    out = net(x, taps)
    assert list(taps.records) == ["layer2"]
    assert torch.equal(out, net(x))
    assert torch.equal(net(x, TapContext(record="layer3")), out)


def test_zero_modifier_changes_output_identity_keeps_it() -> None:
    net = _build("reduced_resnet18", CIFAR).eval()
    x = _input(CIFAR)
    base = net(x)
    zeroed = net(x, TapContext(modifiers={"layer2": lambda t: t * 0}))
    assert not torch.allclose(zeroed, base)
    same = net(x, TapContext(modifiers={"layer4": lambda t: t}))
    assert torch.equal(same, base)
    # The recorded value is the replacement.
    taps = TapContext(record=["stem"], modifiers={"stem": lambda t: t - 100.0})
    net(x, taps)
    assert (taps.records["stem"] < 0).all()


def test_sam_style_modifier_gradients_flow() -> None:
    """ReLU(a * s) at all five sites (SAM/SER); modifier parameters and backbone get grads."""
    net = _build("reduced_resnet18", CIFAR)
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    x = _input(CIFAR)
    record = TapContext(record=True)
    teacher(x, record)
    scale = nn.Parameter(torch.ones(()))
    modifiers = {k: (lambda a, s=s: a * s * scale) for k, s in record.records.items()}
    net(x, TapContext(modifiers=modifiers)).sum().backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    assert net.conv1.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_module_modifier_and_records_keep_graph() -> None:
    mlp = _build("mlp", MNIST)
    gate = nn.Linear(100, 100)
    taps = TapContext(record=["fc2"], modifiers={"fc1": gate})
    mlp(_input(MNIST), taps)
    taps.records["fc2"].pow(2).mean().backward()  # TwF-style loss on a recorded tap
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0
    assert mlp.layers[0].weight.grad is not None


def test_unknown_tap_name_lists_valid_names() -> None:
    net = _build("mlp", MNIST)
    with pytest.raises(ValueError, match="fc1, fc2"):
        net(_input(MNIST), TapContext(record=["layer4"]))
    with pytest.raises(ValueError, match="bogus"):
        net(_input(MNIST), TapContext(modifiers={"bogus": lambda t: t}))


def test_context_reused_across_backbones_is_revalidated() -> None:
    taps = TapContext(record=["stem"])
    _build("reduced_resnet18", CIFAR)(_input(CIFAR), taps)
    with pytest.raises(ValueError, match="stem"):
        _build("mlp", CIFAR)(_input(CIFAR), taps)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"name": "resnet18", "depth": 34}, "backbone.depth"),
        ({"name": "no_such_net"}, "backbone.name"),
        ({}, "backbone.name"),
        ({"name": "resnet18", "width": "wide"}, "backbone.width"),
        ({"name": "resnet18", "width": 0}, "backbone.width"),
        ({"name": "mlp", "input_shape": [1, 28, 28]}, "backbone.input_shape"),
        ({"name": "reduced_resnet18", "width": 64}, "backbone.width"),
        ({"name": "timm:resnet10t", "pretrain": False}, "backbone.pretrain"),
        ({"name": "timm:definitely_not_a_model"}, "backbone.name"),
    ],
)
def test_registry_errors_name_the_key(cfg: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        build_backbone(cfg, CIFAR)
    assert info.value.key == key


def test_error_messages_suggest_fixes() -> None:
    with pytest.raises(ConfigError) as unknown_key:
        build_backbone({"name": "resnet18", "depth": 34}, CIFAR)
    assert "unknown key for backbone 'resnet18'" in str(unknown_key.value)
    assert "valid keys: name, width" in str(unknown_key.value)
    with pytest.raises(ConfigError) as unknown_name:
        build_backbone({"name": "resnet1"}, CIFAR)
    for hint in ("mlp", "resnet18", "reduced_resnet18", "timm:<model>"):
        assert hint in str(unknown_name.value)


def test_user_registered_backbone_and_required_params() -> None:
    @register_backbone("test_linear_probe")
    class LinearProbe(Backbone):
        tap_names = ("proj",)

        def __init__(self, input_shape: tuple[int, int, int], out_dim: int) -> None:
            super().__init__()
            self.proj = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], out_dim)
            self.feature_dim = out_dim

        def forward(self, x: torch.Tensor, taps: TapContext | None = None) -> torch.Tensor:
            return F.relu(self.tap("proj", self.proj(x.flatten(1)), taps))

    @register_backbone("test_factory_fn")
    def factory(input_shape: tuple[int, int, int], hidden: int = 7) -> Backbone:
        return LinearProbe(input_shape, hidden)

    assert "test_linear_probe" in available_backbones()
    built = build_backbone({"name": "test_linear_probe", "out_dim": 5}, MNIST)
    assert isinstance(built, LinearProbe) and built(_input(MNIST)).shape == (2, 5)
    assert build_backbone({"name": "test_factory_fn"}, MNIST).feature_dim == 7
    with pytest.raises(ConfigError, match=r"'backbone.out_dim'.*required"):
        build_backbone({"name": "test_linear_probe"}, MNIST)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test_linear_probe")(LinearProbe)
    with pytest.raises(ValueError, match="reserved"):
        register_backbone("timm:mine")


def test_omegaconf_config_is_accepted() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    root = omegaconf.OmegaConf.create({"w": 4, "backbone": {"name": "resnet18", "width": "${w}"}})
    assert build_backbone(root.backbone, CIFAR).feature_dim == 32
    root.backbone.depth = 3
    with pytest.raises(ConfigError, match=r"backbone.depth"):
        build_backbone(root.backbone, CIFAR)


# ---------------------------------------------------------------------------- timm


def test_timm_forward_and_taps() -> None:
    net = _build("timm:resnet10t", MNIST)
    assert net.tap_names == ("stage0", "stage1", "stage2", "stage3", "stage4")
    x = _input(MNIST)
    taps = TapContext(record=True)
    out = net(x, taps)
    assert out.shape == (2, net.feature_dim) == (2, 512)
    assert [tuple(t.shape[:2]) for t in taps.records.values()] == [
        (2, 64),
        (2, 64),
        (2, 128),
        (2, 256),
        (2, 512),
    ]
    assert net._active_taps is None  # context only lives during forward
    net.eval()
    base = net(x)
    assert not torch.allclose(net(x, TapContext(modifiers={"stage2": lambda t: t * 0})), base)
    assert torch.equal(net(x, TapContext(modifiers={"stage4": lambda t: t})), base)
    with pytest.raises(ValueError, match="stage0"):
        net(x, TapContext(record=["layer1"]))


def test_timm_head_hidden_feature_dim() -> None:
    net = _build("timm:mobilenetv3_small_050", CIFAR).eval()
    assert net(_input(CIFAR)).shape == (2, net.feature_dim)


def test_timm_deepcopy_hooks_follow_the_copy() -> None:
    student = _build("timm:resnet10t", CIFAR)
    teacher = copy.deepcopy(student)
    taps = TapContext(record=["stage4"])
    teacher(_input(CIFAR), taps)
    assert "stage4" in taps.records
    assert student._active_taps is None


def test_timm_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=3)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    net = build_backbone(
        {"name": "timm:resnet10t", "pretrained": False, "checkpoint_path": str(path)}, CIFAR
    )
    loaded = net.model.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0)

    missing = tmp_path / "missing.pt"
    with pytest.raises(ConfigError, match=r"missing.pt"):
        build_backbone({"name": "timm:resnet10t", "checkpoint_path": str(missing)}, CIFAR)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"corrupt.pt"):
        build_backbone({"name": "timm:resnet10t", "checkpoint_path": str(corrupt)}, CIFAR)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ConfigError, match=r"unrelated.pt.*matches"):
        build_backbone({"name": "timm:resnet10t", "checkpoint_path": str(unrelated)}, CIFAR)


def test_mlp_output_head_is_initialised_like_mammoths_classifier():
    """Mammoth's MNISTMLP applies xavier to its classifier too: zero bias, xavier-uniform
    weights (PyTorch's default Linear init has a non-zero bias and a bound of 1/sqrt(fan_in))."""
    from cl_framework.engine.heads import HeadManager
    from cl_framework.engine.module import CLModule
    from cl_framework.engine.optim import OptimizerConfig
    from cl_framework.scenarios.transforms import BatchTransform

    torch.manual_seed(0)
    backbone = build_backbone({"name": "mlp"}, (1, 28, 28))
    heads = HeadManager(10)
    module = CLModule(
        backbone, heads, [], OptimizerConfig(), BatchTransform(), torch.ones(1, 10, dtype=bool)
    )
    weight, bias = module.head.weight, module.head.bias
    bound = (6 / (100 + 10)) ** 0.5
    assert torch.count_nonzero(bias) == 0
    assert float(weight.abs().max()) <= bound
    assert float(weight.abs().max()) > 0.8 * bound  # uses the xavier range, not 1/sqrt(100)
