"""``clf-pretrain``: train a registered backbone on a whole dataset and write its checkpoint.

Pretrained siblings (TwF) and pretrained initialisations (``strategy=[..., pretrained]``) load
what this job writes. It trains backbone + a linear classifier on every class of one source at
once (any registered source, e.g. ``mnist``, ``cifar100`` or ``resized``, or an auxiliary
preset such as ``tinyimagenet-half2``), evaluates on the source's test split and writes,
atomically and loadable with ``torch.load(weights_only=True)``::

    {"backbone": state_dict, "head": state_dict, "meta": {backbone, source, input_shape, ...}}

plus a JSON summary next to it. Example::

    clf-pretrain experiment=pretrain/mnist-resnet18-reduced
    # -> outputs/pretrained/mnist-resnet18-reduced.pt

``python -m cl_framework.pretrain`` is the same. Randomness (init, shuffles, augmentation) comes
from ``seed`` only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

from cl_framework.engine.runner import resolve_device
from cl_framework.errors import CLFrameworkError, ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("cl_framework.pretrain")


@dataclass
class PretrainDataConfig:
    """``data``: the source dataset (all classes) and its input pipeline."""

    source: str = "mnist"
    source_options: dict[str, Any] = field(default_factory=dict)
    resize_to: list[int] | None = None
    channels: int | None = None
    normalize: bool = False
    crop_padding: int = 0
    hflip: bool = False


@dataclass
class PretrainTrainingConfig:
    """``training``: the plain supervised loop."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    accelerator: str = "auto"
    log_every_n_steps: int = 100


TOP_LEVEL = ("seed", "name", "data", "backbone", "optimizer", "training", "paths", "output")


@dataclass
class PretrainConfig:
    seed: int
    name: str
    data: PretrainDataConfig
    backbone: dict[str, Any]
    optimizer: Any
    training: PretrainTrainingConfig
    output: str


def validate_pretrain_config(cfg: Mapping[str, Any] | DictConfig) -> PretrainConfig:
    """Check every key before any data is read; one ConfigError names the first bad key."""
    from cl_framework.config_schema import check_top_level, validate_node
    from cl_framework.engine.optim import OptimizerConfig
    from cl_framework.run_config import to_plain

    plain = to_plain(cfg)
    seed = check_top_level(plain, TOP_LEVEL)
    data = validate_node(plain.get("data"), PretrainDataConfig, "data")
    if data.resize_to is not None and len(data.resize_to) != 2:
        raise ConfigError("data.resize_to", "must be [H, W] or null")
    training = validate_node(plain.get("training"), PretrainTrainingConfig, "training")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(training, key) <= 0:
            raise ConfigError(f"training.{key}", f"must be positive, got {getattr(training, key)}")
    optimizer = validate_node(plain.get("optimizer"), OptimizerConfig, "optimizer")
    optimizer.validate()
    backbone = plain.get("backbone")
    if not isinstance(backbone, dict) or "name" not in backbone:
        raise ConfigError("backbone.name", "missing", "select one, e.g. backbone=reduced_resnet18")
    output = plain.get("output")
    if not isinstance(output, str) or not output:
        raise ConfigError("output", "missing", "the checkpoint path to write, e.g. out/x.pt")
    name = plain.get("name") or Path(output).stem
    return PretrainConfig(
        seed=seed,
        name=str(name),
        data=data,
        backbone=backbone,
        optimizer=optimizer,
        training=training,
        output=output,
    )


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, to_float: Any, batch: int, device: Any
) -> float:
    """Top-1 accuracy (percent) of ``model`` on uint8 images ``x``."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(y), batch):
        logits = model(to_float(x[start : start + batch].to(device)))
        correct += int((logits.argmax(1).cpu() == y[start : start + batch]).sum())
    model.train(was_training)
    return 100.0 * correct / max(len(y), 1)


def load_pretrain_source(d: PretrainDataConfig, data_dir: str | Path) -> Any:
    """The ``data`` node's dataset: a registered source or an auxiliary preset, optionally
    resized / converted to ``channels`` after loading."""
    from cl_framework.scenarios import available_sources, load_source
    from cl_framework.scenarios.auxiliary import AUXILIARY_PRESETS, match_input_shape

    options = dict(d.source_options)
    if d.source in AUXILIARY_PRESETS:
        name, preset = AUXILIARY_PRESETS[d.source]
        options = {**preset, **options}
    elif d.source in available_sources():
        name = d.source
    else:
        raise ConfigError(
            "data.source",
            f"unknown dataset '{d.source}'",
            "use a registered source (" + ", ".join(available_sources()) + ") or an auxiliary "
            "preset (" + ", ".join(AUXILIARY_PRESETS) + ")",
        )
    source = load_source(name, data_dir, **options)
    if d.resize_to is not None or d.channels is not None:
        size = tuple(d.resize_to) if d.resize_to is not None else None
        source = match_input_shape(source, size, d.channels)
    return source


def pretrain(cfg: Mapping[str, Any] | DictConfig, data_dir: str | None = None) -> dict[str, Any]:
    """Run the job described by ``cfg``; returns the summary written next to the checkpoint."""
    from cl_framework.backbones import build_backbone
    from cl_framework.engine.checkpoint import atomic_save
    from cl_framework.engine.optim import build_optimizer, build_scheduler
    from cl_framework.run_config import to_plain
    from cl_framework.scenarios.transforms import BatchTransform

    pc = validate_pretrain_config(cfg)
    plain = to_plain(cfg)
    data_dir = data_dir or (plain.get("paths") or {}).get("data_dir") or "./data"
    start = time.perf_counter()
    d = pc.data
    source = load_pretrain_source(d, data_dir)
    torch.manual_seed(pc.seed)  # model initialisation (layers use the default generator)
    backbone = build_backbone(pc.backbone, source.input_shape)
    head = nn.Linear(backbone.feature_dim, source.n_classes)
    backbone.init_head(head)
    model = nn.Sequential(backbone, head)
    device = resolve_device(pc.training.accelerator)
    model.to(device)
    transform = BatchTransform(
        mean=source.mean if d.normalize else None,
        std=source.std if d.normalize else None,
        crop_padding=d.crop_padding,
        hflip=d.hflip,
        seed=pc.seed + 2,
    )
    optimizer = build_optimizer(pc.optimizer, model.parameters())
    scheduler = build_scheduler(pc.optimizer, optimizer)
    shuffle = torch.Generator().manual_seed(pc.seed + 1)
    t = pc.training
    n = len(source.train_y)
    log.info(
        "pre-training %s on %s: %d train / %d test images of shape %s, %d classes, %d epochs",
        pc.backbone["name"],
        source.name,
        n,
        len(source.test_y),
        source.input_shape,
        source.n_classes,
        t.epochs,
    )
    history = []
    step = 0
    model.train()
    for epoch in range(t.epochs):
        order = torch.randperm(n, generator=shuffle)
        total, count = 0.0, 0
        for begin in range(0, n, t.batch_size):
            idx = order[begin : begin + t.batch_size]
            x = transform.train(source.train_x[idx].to(device))
            y = source.train_y[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            step += 1
            if step % max(1, t.log_every_n_steps) == 0:
                log.info("epoch %d step %d: loss %.4f", epoch + 1, step, float(loss.detach()))
        if scheduler is not None:
            scheduler.step()
        history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1)})
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, t.epochs, total / max(count, 1))
    test_acc = evaluate_accuracy(
        model, source.test_x, source.test_y, transform.to_float, t.eval_batch_size, device
    )
    seconds = time.perf_counter() - start
    meta = {
        "name": pc.name,
        "backbone": json.dumps(pc.backbone, sort_keys=True),
        "source": source.name,
        "input_shape": list(source.input_shape),
        "n_classes": source.n_classes,
        "class_names": list(source.class_names),
        "normalize": d.normalize,
        "mean": list(source.mean),
        "std": list(source.std),
        "epochs": t.epochs,
        "seed": pc.seed,
        "test_acc": test_acc,
        "train_time_s": seconds,
    }
    payload = {
        "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "meta": meta,
    }
    output = Path(pc.output).expanduser()
    atomic_save(payload, output)
    summary = {
        **meta,
        "backbone": pc.backbone,
        "checkpoint": str(output),
        "history": history,
        "config": {k: v for k, v in plain.items() if k != "paths"},
        "data": asdict(d),
    }
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("test accuracy %.2f%%; checkpoint written to %s (%.0fs)", test_acc, output, seconds)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
def hydra_main(cfg: DictConfig) -> float:
    from cl_framework.train import quiet_lightning

    quiet_lightning()
    _ = HydraConfig.get()
    try:
        summary = pretrain(cfg)
    except CLFrameworkError as exc:
        print(f"clf-pretrain: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(summary["test_acc"])


def main() -> None:
    """``clf-pretrain``; Hydra's composition errors (typos, unknown choices) exit 2, our message."""
    from cl_framework.cli_errors import run_hydra_cli

    run_hydra_cli(hydra_main, "clf-pretrain", CONFIG_DIR, run_schemas=False)


if __name__ == "__main__":
    main()
