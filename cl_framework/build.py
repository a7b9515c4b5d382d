"""Build a run from a config: validate, load data, construct every object, wire the plug-ins.

Everything that can be wrong with the input (config keys, data files, incompatible choices)
fails here, before any training starts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, Logger
from torch import nn

from cl_framework.backbones import build_backbone
from cl_framework.buffer import ReplayBuffer
from cl_framework.engine.distributed import global_rank, world_size_from_config
from cl_framework.engine.heads import HeadManager
from cl_framework.engine.module import CLModule
from cl_framework.engine.plugin import StrategyContext
from cl_framework.engine.runner import ContinualRunner, resolve_device
from cl_framework.errors import ConfigError
from cl_framework.run_config import RunConfig, crops_of, storage_of, to_plain, validate_run_config
from cl_framework.scenarios import Scenario, build_scenario, load_source
from cl_framework.scenarios.disk import check_in_memory_strategies, streams_from_disk
from cl_framework.scenarios.subset import subsample_scenario
from cl_framework.scenarios.transforms import BatchTransform
from cl_framework.strategies.registry import build_strategies, import_strategy_modules

log = logging.getLogger(__name__)


def build_scenario_from_config(rc: RunConfig) -> Scenario:
    s = rc.scenario
    if "storage" in s.source_options:
        raise ConfigError(
            "scenario.source_options.storage",
            "is not a source option",
            fix="set scenario.storage=memory|disk|auto instead",
        )
    source = load_source(s.source, rc.paths.data_dir, storage=storage_of(s), **s.source_options)
    scenario = build_scenario(
        source,
        name=s.name,
        setting=s.setting,
        n_experiences=s.n_experiences,
        classes_per_experience=s.classes_per_experience,
        class_order=s.class_order,
        class_order_seed=s.class_order_seed,
        val_fraction=s.val_fraction,
        val_seed=rc.seed,
    )
    if s.max_train_per_class is not None:
        scenario = subsample_scenario(scenario, s.max_train_per_class, seed=rc.seed)
    return scenario


def scenario_on_disk(scenario: Scenario) -> bool:
    """Whether any split of ``scenario`` streams its images from disk (``scenario.storage``)."""
    splits = [s for e in scenario for s in (e.train, e.val, e.test) if s is not None]
    return any(streams_from_disk(s.x) for s in splits)


def build_transform(rc: RunConfig, scenario: Scenario) -> tuple[BatchTransform, Scenario]:
    """The batched transform, and the scenario with ``input_shape`` = what the network sees
    (the crop size when the scenario crops; training and evaluation must agree on it)."""
    s = rc.scenario
    rrc, center = crops_of(s)
    transform = BatchTransform(
        mean=scenario.mean if s.normalize else None,
        std=scenario.std if s.normalize else None,
        crop_padding=s.crop_padding,
        hflip=s.hflip,
        seed=rc.seed + 2,
        random_resized_crop=rrc,
        center_crop=center,
    )
    c, h, w = scenario.input_shape
    if center is not None and (center[0] > h or center[1] > w):
        raise ConfigError(
            "scenario.center_crop",
            f"{list(center)} is larger than the {h}x{w} images",
            fix="crop at most the stored size (scenario.source_options.size)",
        )
    train_hw = transform.output_size(h, w, train=True)
    eval_hw = transform.output_size(h, w, train=False)
    if train_hw != eval_hw:
        raise ConfigError(
            "scenario.center_crop",
            f"training feeds the network {train_hw[0]}x{train_hw[1]} crops "
            f"(scenario.random_resized_crop) but evaluation the whole {h}x{w} images",
            fix=f"set scenario.center_crop={list(train_hw)} (evaluation crop)",
        )
    if (c, *train_hw) != tuple(scenario.input_shape):
        scenario = dataclasses.replace(scenario, input_shape=(c, *train_hw))
    return transform, scenario


def build_loggers(rc: RunConfig, output_dir: Path, resumed: bool = False) -> list[Logger]:
    """CSV always; TensorBoard and wandb when selected (wandb offline unless configured).

    A resumed run logs into a new CSV version folder so the earlier rows are never rewritten.
    """
    csv_version = ""
    if resumed:
        n = 1
        while (output_dir / "logs" / f"resume-{n}").exists():
            n += 1
        csv_version = f"resume-{n}"
    loggers: list[Logger] = [CSVLogger(save_dir=str(output_dir), name="logs", version=csv_version)]
    if "tensorboard" in rc.loggers:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(
            TensorBoardLogger(
                save_dir=str(output_dir), name="tensorboard", version="", default_hp_metric=False
            )
        )
    if "wandb" in rc.loggers:
        from pytorch_lightning.loggers import WandbLogger

        w = rc.loggers["wandb"]
        loggers.append(
            WandbLogger(
                project=w.project,
                entity=w.entity,
                name=w.name or rc.name,
                offline=w.mode == "offline",
                save_dir=str(output_dir),
                tags=list(w.tags),
            )
        )
    return loggers


def use_channels_last(setting: Any, module: nn.Module, device: torch.device) -> bool:
    """``trainer.channels_last``: true / false, or ``auto`` = on when ``module`` (the backbone)
    has 2-D convolutions and runs on CPU. Measured on 2 CPU cores, one thread, reduced
    ResNet-18 at 32 px (``experiments/profile/RESULTS.md``): ~1.3x faster training steps and
    ~1.5x faster evaluation than NCHW. Off by default on GPU (not measured here; turn it on
    for AMP)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(
            "trainer.channels_last",
            f"must be true, false or auto, got {setting!r}",
            "set trainer.channels_last=auto (the default), true or false",
        )
    has_conv = any(isinstance(m, nn.Conv2d) for m in module.modules())
    return has_conv and device.type == "cpu"


def apply_memory_and_compile_options(module: CLModule, rc: RunConfig) -> None:
    """``trainer.channels_last`` (NHWC weights and inputs; see :func:`use_channels_last`)
    and ``trainer.compile`` (``torch.compile`` of the backbone; the first steps compile)."""
    device = resolve_device(rc.trainer.accelerator)
    if use_channels_last(rc.trainer.channels_last, module.backbone, device):
        # the whole module: plug-ins' conv nets (SAM's saliency branch, TwF's sibling) too
        module.to(memory_format=torch.channels_last)
        module.transform.channels_last = True
        log.info(
            "memory format: channels_last (trainer.channels_last=%s)", rc.trainer.channels_last
        )
    if rc.trainer.compile:
        module.backbone.forward = torch.compile(module.backbone.forward)


def finite_check_interval(rc: RunConfig, device: torch.device) -> int:
    """Steps between loss finiteness checks: every step on CPU (free), every logging interval
    on accelerators (each check is a host sync), unless configured."""
    every = rc.trainer.check_finite_every_n_steps
    if every is not None:
        return every
    return 1 if device.type == "cpu" else max(1, rc.trainer.log_every_n_steps)


#: Below this many backbone parameters a training step is too small to split across threads:
#: torch's default (one thread per core) is slower, and on a loaded machine the threads wait on
#: each other (experiments/bench/THREADS.md).
SMALL_MODEL_PARAMETERS = 1_000_000


def set_cpu_threads(requested: int | None, backbone: torch.nn.Module, device: torch.device) -> int:
    """Set torch's intra-op threads: ``trainer.num_threads``, or for null (auto) one thread for
    small models on CPU unless ``OMP_NUM_THREADS`` says otherwise; torch's default elsewhere."""
    import os

    if requested is not None:
        torch.set_num_threads(requested)
        reason = "trainer.num_threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        reason = "OMP_NUM_THREADS"
    elif device.type == "cpu":
        n_params = sum(p.numel() for p in backbone.parameters())
        if n_params < SMALL_MODEL_PARAMETERS:
            torch.set_num_threads(1)
            reason = f"auto: small model, {n_params / 1e3:.0f}k parameters"
        else:
            reason = f"auto: torch default, {n_params / 1e6:.1f}M parameters"
    else:
        reason = "auto: torch default"
    threads = torch.get_num_threads()
    log.info("CPU threads: %d (%s; set trainer.num_threads to change)", threads, reason)
    return threads


def build_runner(cfg: Mapping[str, Any], output_dir: Path | str) -> ContinualRunner:
    """The runner of a validated config, with every object built and plug-ins set up."""
    output_dir = Path(output_dir)
    rc = validate_run_config(cfg)
    import_strategy_modules(rc.extra_modules)
    plugins = build_strategies(rc.strategy)
    replay = [p.name for p in plugins if p.uses_buffer]
    if replay and rc.buffer.size <= 0:
        raise ConfigError(
            "buffer.size",
            f"strategy {replay} replays from the buffer but buffer.size is {rc.buffer.size}",
            "set buffer.size to a positive number of samples, e.g. buffer.size=200",
        )
    if rc.scenario.val_fraction > 0 and not any(p.name == "val_eval" for p in plugins):
        log.warning(
            "scenario.val_fraction=%s holds %.0f%% of each experience's training data out, but "
            "no strategy evaluates on it: add val_eval last (strategy=[...,val_eval]) to get "
            "validation accuracy, or set scenario.val_fraction=0 to train on all of it",
            rc.scenario.val_fraction,
            100 * rc.scenario.val_fraction,
        )
    in_memory = [p.name for p in plugins if p.needs_in_memory_data]
    if rc.scenario.storage == "disk":
        check_in_memory_strategies(in_memory, rc.scenario.source)
    scenario = build_scenario_from_config(rc)
    if scenario_on_disk(scenario):  # storage=auto chose disk
        check_in_memory_strategies(in_memory, rc.scenario.source)
    transform, scenario = build_transform(rc, scenario)
    if rc.trainer.num_threads is not None and rc.trainer.num_threads <= 0:
        raise ConfigError(
            "trainer.num_threads",
            f"must be a positive thread count or null (auto), got {rc.trainer.num_threads}",
        )
    pl.seed_everything(rc.seed, workers=True, verbose=False)
    backbone = build_backbone(rc.backbone, scenario.input_shape)
    set_cpu_threads(rc.trainer.num_threads, backbone, resolve_device(rc.trainer.accelerator))
    tap_users = [p.name for p in plugins if p.needs_taps]
    if tap_users and not backbone.tap_names:
        raise ConfigError(
            "backbone.name",
            f"strategy {tap_users} needs feature taps but backbone '{rc.backbone['name']}' "
            "has none",
            "use a backbone with taps (mlp, resnet18, reduced_resnet18, timm models with "
            "feature_info)",
        )
    heads = HeadManager(scenario.n_classes, sum(p.extra_heads() for p in plugins))
    device = resolve_device(rc.trainer.accelerator)
    buffer = None
    t = rc.trainer
    world = world_size_from_config(t.strategy, t.devices, t.num_nodes)
    rank = global_rank(t.devices) if world > 1 else 0
    sharded = world > 1 and rc.buffer.distributed == "sharded"
    if replay:
        buffer_device = device if rc.buffer.device == "auto" else torch.device(rc.buffer.device)
        capacity = rc.buffer.size // world if sharded else rc.buffer.size
        if capacity <= 0:
            raise ConfigError(
                "buffer.size",
                f"{rc.buffer.size} slots cannot be sharded over {world} processes",
                "use a larger buffer.size or buffer.distributed=replicated",
            )
        buffer = ReplayBuffer(
            capacity,
            policy=rc.buffer.policy,
            device=buffer_device,
            seed=rc.seed + 1 + (rank if sharded else 0),
        )
    s = rc.scenario
    module = CLModule(
        backbone=backbone,
        heads=heads,
        plugins=plugins,
        optimizer=rc.optimizer,
        transform=transform,
        task_heads=heads.task_mask([exp.classes for exp in scenario]),
        setting=s.setting,
        buffer=buffer,
        log_every_n_steps=rc.trainer.log_every_n_steps,
        gradient_clip_val=rc.trainer.gradient_clip_val,
        check_finite_every_n_steps=finite_check_interval(rc, device),
        replicate_buffer=world > 1 and not sharded,
        fuse_forward=rc.trainer.fused_forward,
    )
    runner = ContinualRunner(
        scenario,
        module,
        rc.trainer,
        seed=rc.seed,
        loggers=build_loggers(rc, output_dir, resumed=rc.resume is not None),
        output_dir=output_dir,
        config={k: v for k, v in to_plain(cfg).items() if k != "resume"},
    )
    apply_memory_and_compile_options(module, rc)
    ctx = StrategyContext(
        module=module, scenario=scenario, heads=heads, buffer=buffer, runner=runner
    )
    for plugin in plugins:
        plugin.setup(ctx)
    module.to(device)
    return runner
