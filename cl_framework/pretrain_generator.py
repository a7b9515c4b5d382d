"""``clf-pretrain-generator``: train the small class-conditional diffusion model once, then freeze.

Dream2Learn dreams through a *frozen* generator pretrained outside the continual task. Offline,
that generator is our :class:`~cl_framework.generators.tiny_diffusion.TinyDiffusion`, trained
here on an auxiliary dataset (any registered source or auxiliary preset), e.g.::

    clf-pretrain-generator experiment=pretrain/generator-fashion-mnist
    # -> outputs/generators/generator-fashion-mnist.pt (+ .json summary, + _samples.png)

The checkpoint is ``weights_only``-loadable and holds the EMA weights (what sampling uses) and
the architecture. The summary records the loss curve and a sample-quality proxy: a small
classifier is trained on the real training images and its accuracy on guided samples of each
class is reported ("sample accuracy"; real-test accuracy next to it for scale).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cl_framework.engine.runner import resolve_device
from cl_framework.errors import CLFrameworkError, ConfigError
from cl_framework.generators.tiny_diffusion import (
    TinyDiffusion,
    TinyDiffusionConfig,
    checkpoint_payload,
)
from cl_framework.pretrain import PretrainDataConfig, load_pretrain_source

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("cl_framework.pretrain_generator")

TOP_LEVEL = ("seed", "name", "data", "model", "training", "sampling", "paths", "output")


@dataclass
class GeneratorTrainingConfig:
    """``training``: AdamW on the denoising loss with an EMA copy of the weights."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    max_train_per_class: int | None = None
    accelerator: str = "auto"
    log_every_n_steps: int = 100


@dataclass
class GeneratorSamplingConfig:
    """``sampling``: the defaults stored for Dream2Learn and the sample grid / quality check."""

    steps: int = 10
    guidance_scale: float = 2.0
    grid_per_class: int = 8
    eval_per_class: int = 100
    eval_classifier_epochs: int = 1


@dataclass
class GeneratorPretrainConfig:
    seed: int
    name: str
    data: PretrainDataConfig
    model: TinyDiffusionConfig
    training: GeneratorTrainingConfig
    sampling: GeneratorSamplingConfig
    output: str


def validate_generator_config(cfg: Mapping[str, Any] | DictConfig) -> GeneratorPretrainConfig:
    """Check every key before any data is read; one ConfigError names the first bad key."""
    from cl_framework.config_schema import check_top_level, validate_node
    from cl_framework.run_config import to_plain

    plain = to_plain(cfg)
    seed = check_top_level(plain, TOP_LEVEL)
    data = validate_node(plain.get("data"), PretrainDataConfig, "data")
    if data.normalize:
        raise ConfigError("data.normalize", "the generator works on images in [0, 1]", "false")
    model_node = dict(plain.get("model") or {})
    model_node.pop("image_shape", None)  # taken from the data
    model_node.pop("n_classes", None)
    model = validate_node(model_node, TinyDiffusionConfig, "model")
    training = validate_node(plain.get("training"), GeneratorTrainingConfig, "training")
    for key in ("epochs", "batch_size", "log_every_n_steps"):
        if getattr(training, key) <= 0:
            raise ConfigError(f"training.{key}", f"must be positive, got {getattr(training, key)}")
    if training.lr <= 0:
        raise ConfigError("training.lr", f"must be positive, got {training.lr}")
    if not 0.0 <= training.ema_decay < 1.0:
        raise ConfigError("training.ema_decay", "must be in [0, 1)")
    if training.max_train_per_class is not None and training.max_train_per_class <= 0:
        raise ConfigError("training.max_train_per_class", "must be positive or null")
    sampling = validate_node(plain.get("sampling"), GeneratorSamplingConfig, "sampling")
    if sampling.steps <= 0:
        raise ConfigError("sampling.steps", "must be positive")
    if sampling.guidance_scale < 0:
        raise ConfigError("sampling.guidance_scale", "must be >= 0")
    output = plain.get("output")
    if not isinstance(output, str) or not output:
        raise ConfigError("output", "missing", "the checkpoint path to write, e.g. out/g.pt")
    return GeneratorPretrainConfig(
        seed=seed,
        name=str(plain.get("name") or Path(output).stem),
        data=data,
        model=model,
        training=training,
        sampling=sampling,
        output=output,
    )


def _per_class(y: torch.Tensor, limit: int | None, n_classes: int) -> torch.Tensor:
    """Indices of the first ``limit`` rows of each class (all rows if None)."""
    if limit is None:
        return torch.arange(len(y))
    rows = [(y == c).nonzero().squeeze(1)[:limit] for c in range(n_classes)]
    return torch.cat(rows).sort().values


@torch.no_grad()
def sample_grid(model: TinyDiffusion, per_class: int, seed: int) -> torch.Tensor:
    """(n_classes * per_class, C, H, W) guided samples, class by class (rows of a grid)."""
    out = [
        model.generate(model.embedding.weight[c], per_class, seed + c)
        for c in range(model.n_classes)
    ]
    return torch.cat(out).cpu()


def save_grid(images: torch.Tensor, nrow: int, path: Path, labels: list[str] | None = None) -> Path:
    """A PNG of ``images`` (float [0, 1]) in rows of ``nrow``, with optional row labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    grid = make_grid(images.float().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    rows = max(1, (len(images) + nrow - 1) // nrow)
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 1.6, rows * 0.6 + 0.4))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    if labels:
        h = images.shape[-2] + 2
        ax.set_yticks([2 + h * (i + 0.5) for i in range(len(labels))])
        ax.set_yticklabels(labels, fontsize=7)
    else:
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _judge(
    source: Any, rows: torch.Tensor, epochs: int, seed: int, device: torch.device
) -> tuple[nn.Module, float]:
    """A small CNN trained on the generator's real training images: the sample-quality judge."""
    c = source.input_shape[0]
    torch.manual_seed(seed)
    judge = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 16, source.n_classes),
    ).to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    n = len(rows)
    for _ in range(epochs):
        order = rows[torch.randperm(n, generator=gen)]
        for s in range(0, n, 128):
            idx = order[s : s + 128]
            x = source.train_x[idx].to(device).float() / 255
            loss = F.cross_entropy(judge(x), source.train_y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    judge.eval()
    with torch.no_grad():
        correct = sum(
            int(
                (
                    judge(source.test_x[s : s + 1000].to(device).float() / 255).argmax(1).cpu()
                    == source.test_y[s : s + 1000]
                ).sum()
            )
            for s in range(0, len(source.test_y), 1000)
        )
    return judge, 100.0 * correct / max(len(source.test_y), 1)


def pretrain_generator(
    cfg: Mapping[str, Any] | DictConfig, data_dir: str | None = None
) -> dict[str, Any]:
    """Run the job described by ``cfg``; returns the summary written next to the checkpoint."""
    from cl_framework.engine.checkpoint import atomic_save
    from cl_framework.run_config import to_plain
    from cl_framework.scenarios.transforms import BatchTransform

    pc = validate_generator_config(cfg)
    plain = to_plain(cfg)
    data_dir = data_dir or (plain.get("paths") or {}).get("data_dir") or "./data"
    start = time.perf_counter()
    source = load_pretrain_source(pc.data, data_dir)
    model_cfg = TinyDiffusionConfig(
        **{
            **asdict(pc.model),
            "image_shape": list(source.input_shape),
            "n_classes": source.n_classes,
        }
    )
    model_cfg.validate()
    device = resolve_device(pc.training.accelerator)
    torch.manual_seed(pc.seed)
    model = TinyDiffusion(
        model_cfg,
        sample_steps=pc.sampling.steps,
        guidance_scale=pc.sampling.guidance_scale,
        class_names=source.class_names,
    ).to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(pc.training.ema_decay))
    t = pc.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    rows = _per_class(source.train_y, t.max_train_per_class, source.n_classes)
    n = len(rows)
    steps_per_epoch = (n + t.batch_size - 1) // t.batch_size
    total_steps = steps_per_epoch * t.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=t.lr, total_steps=total_steps, pct_start=0.05
    )
    transform = BatchTransform(
        crop_padding=pc.data.crop_padding, hflip=pc.data.hflip, seed=pc.seed + 2
    )
    shuffle = torch.Generator().manual_seed(pc.seed + 1)
    noise = torch.Generator().manual_seed(pc.seed + 3)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "training the generator (%d parameters) on %s: %d images of shape %s, %d classes, "
        "%d epochs x %d steps",
        n_params,
        source.name,
        n,
        source.input_shape,
        source.n_classes,
        t.epochs,
        steps_per_epoch,
    )
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    for epoch in range(t.epochs):
        order = rows[torch.randperm(n, generator=shuffle)]
        total = 0.0
        for begin in range(0, n, t.batch_size):
            idx = order[begin : begin + t.batch_size]
            x0 = transform.train(source.train_x[idx].to(device)) * 2 - 1
            loss = model.loss(x0, source.train_y[idx].to(device), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            total += float(loss.detach()) * len(idx)
            step += 1
            if step % t.log_every_n_steps == 0:
                log.info(
                    "epoch %d/%d step %d/%d: loss %.4f (%.0fs)",
                    epoch + 1,
                    t.epochs,
                    step,
                    total_steps,
                    float(loss.detach()),
                    time.perf_counter() - start,
                )
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1)})
        log.info("epoch %d/%d: denoising loss %.4f", epoch + 1, t.epochs, total / max(n, 1))
    final: TinyDiffusion = ema.module
    final.freeze()
    output = Path(pc.output).expanduser()
    train_seconds = time.perf_counter() - start
    s = pc.sampling
    quality: dict[str, Any] = {}
    if s.eval_per_class > 0 and s.eval_classifier_epochs > 0:
        judge, real_acc = _judge(source, rows, s.eval_classifier_epochs, pc.seed + 4, device)
        with torch.no_grad():
            samples = sample_grid(final, s.eval_per_class, pc.seed + 10_000).to(device)
            pred = judge(samples).argmax(1).cpu()
        target = torch.arange(source.n_classes).repeat_interleave(s.eval_per_class)
        per_class = [
            100.0 * float((pred[target == c] == c).float().mean()) for c in range(source.n_classes)
        ]
        quality = {
            "sample_accuracy": 100.0 * float((pred == target).float().mean()),
            "sample_accuracy_per_class": per_class,
            "judge_real_test_accuracy": real_acc,
        }
        log.info(
            "guided samples classified as their class: %.1f%% (judge on real test images: %.1f%%)",
            quality["sample_accuracy"],
            real_acc,
        )
    meta = {
        "name": pc.name,
        "source": source.name,
        "class_names": list(source.class_names),
        "epochs": t.epochs,
        "seed": pc.seed,
        "train_images": n,
        "parameters": n_params,
        "sample_steps": s.steps,
        "guidance_scale": s.guidance_scale,
        "train_time_s": train_seconds,
        **{k: v for k, v in quality.items() if k != "sample_accuracy_per_class"},
    }
    atomic_save(checkpoint_payload(final, meta), output)
    grid_path = output.with_name(output.stem + "_samples.png")
    if s.grid_per_class > 0:
        grid = sample_grid(final, s.grid_per_class, pc.seed + 20_000)
        save_grid(grid, s.grid_per_class, grid_path, list(source.class_names))
    summary = {
        **meta,
        **quality,
        "checkpoint": str(output),
        "sample_grid": str(grid_path) if s.grid_per_class > 0 else None,
        "history": history,
        "model": asdict(model_cfg),
        "config": {k: v for k, v in plain.items() if k != "paths"},
    }
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("generator written to %s (%.0fs); sample grid %s", output, train_seconds, grid_path)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain_generator")
def hydra_main(cfg: DictConfig) -> float:
    _ = HydraConfig.get()
    try:
        summary = pretrain_generator(cfg)
    except CLFrameworkError as exc:
        print(f"clf-pretrain-generator: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(summary["history"][-1]["train_loss"])


def main() -> None:
    """``clf-pretrain-generator``; Hydra composition errors exit 2 with our message."""
    from cl_framework.cli_errors import run_hydra_cli

    run_hydra_cli(hydra_main, "clf-pretrain-generator", CONFIG_DIR, run_schemas=False)


if __name__ == "__main__":
    main()
