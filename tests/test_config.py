"""Config validation: each bad input stops before training with one error naming the key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from cl_framework.backbones import register_backbone
from cl_framework.backbones.taps import Backbone
from cl_framework.build import build_runner
from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.errors import ConfigError
from cl_framework.strategies import register_strategy
from tests.conftest import ROOT


class _NoTaps(Backbone):
    tap_names = ()

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.feature_dim = 8
        self.fc = __import__("torch").nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 8)

    def forward(self, x, taps=None):
        return self.fc(x.flatten(1))


register_backbone("_test_no_taps")(_NoTaps)


@register_strategy
class _NeedsTaps(StrategyPlugin):
    name = "_test_needs_taps"
    needs_taps = True

    @dataclass
    class Config:
        pass


@pytest.mark.parametrize(
    ("overrides", "key", "text"),
    [
        (["strategy=[er]", "buffer.size=0"], "buffer.size", "replays from the buffer"),
        (["scenario.n_experiences=3"], "scenario.n_experiences", "3"),
        (["scenario.n_experiences=11"], "scenario.n_experiences", "11"),
        (
            ["scenario.n_experiences=null", "scenario.classes_per_experience=4"],
            "scenario.classes_per_experience",
            "4",
        ),
        (["+strategy.derpp.alpah=1.0"], "strategy.derpp.alpah", "unknown key"),
        (["strategy.derpp.alpha=abc"], "strategy.derpp.alpha", "wrong type"),
        (["+strategy.nope={}"], "strategy", "unknown strategy 'nope'"),
        (["+foo=1"], "foo", "unknown top-level key"),
        (["trainer.epochs=0"], "trainer.epochs", "positive"),
        (["+trainer.epoch=3"], "trainer.epoch", "unknown key"),
        (["+backbone.depth=3"], "backbone.depth", "unknown key"),
        (["backbone.name=nonet"], "backbone.name", "nonet"),
        (["optimizer.name=rmsprop"], "optimizer.name", "rmsprop"),
        (["scenario.setting=domain"], "scenario.setting", "domain"),
        (["scenario.max_train_per_class=0"], "scenario.max_train_per_class", "positive"),
        (["scenario.source=cifar7"], "scenario.source", "cifar7"),
        (["buffer.policy=fifo"], "buffer.policy", "fifo"),
        (
            [
                "strategy=[finetune]",
                "+strategy._test_needs_taps={}",
                "backbone.name=_test_no_taps",
                "~backbone.hidden",
                "~backbone.n_layers",
            ],
            "backbone.name",
            "needs feature taps",
        ),
    ],
)
def test_bad_config_names_the_key(make_config, tmp_path, overrides, key, text):
    cfg = make_config(*overrides)
    with pytest.raises(ConfigError) as info:
        build_runner(cfg, tmp_path)
    assert info.value.key == key
    assert text in str(info.value)
    assert key in str(info.value)


def test_cli_reports_config_error_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_framework.train",
            "strategy=[er]",
            "buffer.size=0",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "buffer.size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_cli_unknown_strategy_group_fails_before_training(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_framework.train",
            "strategy=[nope]",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown choice 'nope'" in proc.stderr
    assert "derpp, er, er_ace" in proc.stderr  # the valid choices are listed


def test_auto_threads_one_for_small_cpu_models_else_torch_default(monkeypatch):
    """trainer.num_threads=null: 1 thread for models under 1M parameters on CPU (2 threads on
    a loaded 2-core machine were 5x slower, experiments/bench/THREADS.md); torch's default for
    larger ones; an explicit value or OMP_NUM_THREADS always wins."""
    import torch

    from cl_framework.build import set_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = torch.device("cpu")
    try:
        torch.set_num_threads(2)
        assert set_cpu_threads(None, torch.nn.Linear(100, 100), cpu) == 1
        torch.set_num_threads(2)
        assert set_cpu_threads(None, torch.nn.Linear(2000, 1000), cpu) == 2  # 2M parameters
        assert set_cpu_threads(3, torch.nn.Linear(100, 100), cpu) == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert set_cpu_threads(None, torch.nn.Linear(100, 100), cpu) == 2
    finally:
        torch.set_num_threads(before)


def test_package_metadata_uses_an_spdx_license():
    """A license table / License classifiers make setuptools print deprecation warnings."""
    import tomllib

    from tests.conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str)
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
