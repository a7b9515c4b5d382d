"""Schemas of the top-level config sections and their validation (before any data is read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cl_framework.config_schema import check_top_level, validate_node
from cl_framework.engine.distributed import DISTRIBUTED_MODES
from cl_framework.engine.optim import OptimizerConfig
from cl_framework.engine.runner import TrainerConfig
from cl_framework.errors import ConfigError
from cl_framework.scenarios.disk import Storage
from cl_framework.scenarios.images import parse_size
from cl_framework.scenarios.scenario import SETTINGS
from cl_framework.scenarios.transforms import RandomResizedCrop

LOGGERS = ("csv", "tensorboard", "wandb")
BUFFER_DEVICES = ("auto", "cpu", "cuda")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
#: Lightning's precision names (its int aliases 16 / 32 / 64 arrive here as strings)
PRECISIONS = (
    "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
    "32", "16", "bf16", "64", "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


@dataclass
class RandomResizedCropConfig:
    """``scenario.random_resized_crop``: torchvision-style random-resized crop for training."""

    size: Any = 224  # output size: int or [height, width]
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # area fraction range
    ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])  # w / h range


@dataclass
class ScenarioConfig:
    """``scenario`` group: a data source split into experiences."""

    name: str = "seq-digits"
    source: str = "digits"
    source_options: dict[str, Any] = field(default_factory=dict)
    setting: str = "class-il"
    n_experiences: int | None = 5
    classes_per_experience: Any = None
    class_order: list[int] | None = None
    class_order_seed: int | None = None
    val_fraction: float = 0.0
    max_train_per_class: int | None = None
    normalize: bool = False
    crop_padding: int = 0
    hflip: bool = False
    random_resized_crop: RandomResizedCropConfig | None = None
    center_crop: Any = None
    storage: str = "memory"
    memory_budget_gb: float | None = None


@dataclass
class BufferConfig:
    """``buffer`` group: the one replay buffer shared by all plug-ins."""

    size: int = 0
    policy: str = "reservoir"
    device: str = "auto"
    distributed: str = "replicated"


@dataclass
class PathsConfig:
    data_dir: str = "./data"
    output_dir: str = "outputs"
    results_log: str | None = "outputs/results.jsonl"


@dataclass
class CSVLoggerConfig:
    """Always on; nothing to configure."""


@dataclass
class TensorBoardLoggerConfig:
    """TensorBoard event files under ``<run dir>/tensorboard``."""


@dataclass
class WandbLoggerConfig:
    project: str = "cl_framework"
    entity: str | None = None
    name: str | None = None
    mode: str = "offline"
    tags: list[str] = field(default_factory=list)


LOGGER_SCHEMAS: dict[str, type] = {
    "csv": CSVLoggerConfig,
    "tensorboard": TensorBoardLoggerConfig,
    "wandb": WandbLoggerConfig,
}

TOP_LEVEL = {
    "seed": "training seed (model init, shuffling, buffer, augmentation)",
    "scenario": "data source and split",
    "backbone": "network body",
    "strategy": "strategy plug-ins, in order",
    "buffer": "replay buffer",
    "optimizer": "optimizer and scheduler",
    "trainer": "training loop",
    "logger": "loggers",
    "paths": "data and output directories",
    "extra_modules": "python modules to import (user strategies, backbones, sources)",
    "name": "free-form run name",
    "resume": "run directory (or checkpoint file) to continue from",
}

#: Keys that may differ between a checkpointed run's config and the resuming command line.
RESUME_MAY_DIFFER = (
    "resume",
    "paths",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    # where images are kept and how many processes decode them: the batches are the same
    "trainer.num_workers",
    "scenario.storage",
    "scenario.memory_budget_gb",
)


@dataclass
class RunConfig:
    """The validated sections of a run config (strategy and backbone nodes stay raw)."""

    seed: int
    scenario: ScenarioConfig
    buffer: BufferConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig
    paths: PathsConfig
    loggers: dict[str, Any]
    backbone: dict[str, Any]
    strategy: dict[str, Any]
    extra_modules: list[str]
    name: str | None
    resume: str | None = None


def to_plain(cfg: Any) -> Any:
    """A resolved plain-python copy of a config (safe to pickle, JSON or weights_only load)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def validate_run_config(cfg: Mapping[str, Any] | DictConfig) -> RunConfig:
    """Check every section; raise one ConfigError naming the first bad key."""
    plain = to_plain(cfg)
    seed = check_top_level(plain, TOP_LEVEL)
    scenario = validate_node(plain.get("scenario"), ScenarioConfig, "scenario")
    if scenario.setting not in SETTINGS:
        raise ConfigError(
            "scenario.setting", f"unknown setting '{scenario.setting}'", f"use {SETTINGS}"
        )
    if not 0.0 <= scenario.val_fraction < 1.0:
        raise ConfigError("scenario.val_fraction", "must be in [0, 1)")
    if scenario.max_train_per_class is not None and scenario.max_train_per_class <= 0:
        raise ConfigError("scenario.max_train_per_class", "must be a positive count or null")
    storage_of(scenario)  # checks scenario.storage / memory_budget_gb
    crops_of(scenario)  # checks scenario.random_resized_crop / center_crop
    buffer = validate_node(plain.get("buffer"), BufferConfig, "buffer")
    if buffer.size < 0:
        raise ConfigError("buffer.size", f"must be >= 0, got {buffer.size}")
    if buffer.distributed not in DISTRIBUTED_MODES:
        raise ConfigError(
            "buffer.distributed",
            f"unknown mode '{buffer.distributed}'",
            f"use {DISTRIBUTED_MODES}",
        )
    if buffer.device not in BUFFER_DEVICES:
        raise ConfigError(
            "buffer.device", f"unknown device '{buffer.device}'", f"use {BUFFER_DEVICES}"
        )
    optimizer = validate_node(plain.get("optimizer"), OptimizerConfig, "optimizer")
    optimizer.validate()
    trainer = validate_node(plain.get("trainer"), TrainerConfig, "trainer")
    for key in ("epochs", "batch_size", "eval_batch_size", "devices", "steps_per_batch"):
        if getattr(trainer, key) <= 0:
            raise ConfigError(f"trainer.{key}", f"must be positive, got {getattr(trainer, key)}")
    if str(trainer.precision) not in PRECISIONS:
        raise ConfigError(
            "trainer.precision",
            f"unknown precision '{trainer.precision}'",
            f"use one of {', '.join(PRECISIONS[:6])} (bf16-mixed / 16-mixed on GPUs)",
        )
    if trainer.accelerator not in ACCELERATORS:
        raise ConfigError(
            "trainer.accelerator",
            f"unknown accelerator '{trainer.accelerator}'",
            f"use one of {', '.join(ACCELERATORS)}",
        )
    if trainer.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.accelerator",
                f"'{trainer.accelerator}' was asked for but torch sees no CUDA GPU here",
                "use trainer.accelerator=auto (GPU when there is one, else CPU) or cpu",
            )
    if trainer.num_workers is not None and trainer.num_workers < 0:
        raise ConfigError(
            "trainer.num_workers",
            f"must be >= 0 or null, got {trainer.num_workers}",
            "use 0 to decode in the training process, or null for one per CPU (at most 8)",
        )
    paths = validate_node(plain.get("paths"), PathsConfig, "paths")
    loggers = {}
    for name, node in (plain.get("logger") or {}).items():
        if name not in LOGGER_SCHEMAS:
            raise ConfigError(f"logger.{name}", "unknown logger", f"use any of {LOGGERS}")
        loggers[name] = validate_node(node, LOGGER_SCHEMAS[name], f"logger.{name}")
    backbone = plain.get("backbone")
    if not isinstance(backbone, dict) or "name" not in backbone:
        raise ConfigError("backbone.name", "missing", "select one, e.g. backbone=mlp")
    strategy = plain.get("strategy")
    if not isinstance(strategy, dict) or not strategy:
        raise ConfigError("strategy", "no strategy selected", "e.g. strategy=[derpp]")
    extra = plain.get("extra_modules") or []
    if not isinstance(extra, list):
        raise ConfigError("extra_modules", "must be a list of module names")
    return RunConfig(
        seed=seed,
        scenario=scenario,
        buffer=buffer,
        optimizer=optimizer,
        trainer=trainer,
        paths=paths,
        loggers=loggers,
        backbone=backbone,
        strategy=strategy,
        extra_modules=[str(m) for m in extra],
        name=plain.get("name"),
        resume=plain.get("resume"),
    )


def storage_of(scenario: ScenarioConfig) -> Storage:
    """``scenario.storage`` and ``scenario.memory_budget_gb`` as a checked storage policy."""
    return Storage(scenario.storage, scenario.memory_budget_gb)


def crops_of(scenario: ScenarioConfig) -> tuple[RandomResizedCrop | None, tuple[int, int] | None]:
    """The checked ``scenario.random_resized_crop`` and ``scenario.center_crop``."""
    center = parse_size(scenario.center_crop, key="scenario.center_crop")
    node = scenario.random_resized_crop
    if node is None:
        return None, center
    key = "scenario.random_resized_crop"
    size = parse_size(node.size, key=f"{key}.size")
    if size is None:
        raise ConfigError(f"{key}.size", "must be set", fix="e.g. 224 or [224, 224]")
    pairs = {}
    for name, example in (("scale", "[0.08, 1.0]"), ("ratio", "[0.75, 1.3333]")):
        pair = [float(v) for v in getattr(node, name)]
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ConfigError(
                f"{key}.{name}", f"must be [min, max] with 0 < min <= max, got {pair}", example
            )
        pairs[name] = (pair[0], pair[1])
    if center is not None and center != size:
        raise ConfigError(
            "scenario.center_crop",
            f"{list(center)} differs from the random-resized crop's size {list(size)}: training "
            "and evaluation would feed the network different sizes",
            fix=f"set scenario.center_crop to {list(size)} or null",
        )
    return RandomResizedCrop(size, pairs["scale"], pairs["ratio"]), center


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two plain configs (allowlisted keys ignored)."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(set(fa) | set(fb))

    def allowed(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in RESUME_MAY_DIFFER)

    return [k for k in keys if not allowed(k) and fa.get(k, "<absent>") != fb.get(k, "<absent>")]
