"""Shared fixtures: composing the real Hydra config tree and running it on small data."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


def shared_data_dir() -> Path:
    """Real MNIST / Fashion-MNIST: CLF_DATA_DIR, else ../shared/data beside the repo."""
    return Path(os.environ.get("CLF_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "mnist").is_dir():
        pytest.fail(f"real MNIST not found under {path}: set CLF_DATA_DIR to the shared data dir")
    return path


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `clf-train <overrides>` would run (without the hydra node)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["trainer.progress_bar=false", *overrides])


@pytest.fixture
def make_config() -> Callable[..., DictConfig]:
    return lambda *overrides: compose_config(overrides)
