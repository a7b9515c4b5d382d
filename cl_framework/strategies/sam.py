"""SAM / SER: saliency-driven modulation of the classifier, over any rehearsal strategy.

Bellitto et al., "Saliency-driven Experience Replay for Continual Learning" (NeurIPS 2024; arXiv
v1 "SAM: Selective Attention-based Modulation"). ``strategy=[er_ace, sam]`` (or ``[derpp, sam]``,
``[er, sam]``, ...). A saliency branch (an encoder with the classifier's architecture + a UNISAL
decoder, :mod:`cl_framework.saliency.branch`) predicts a saliency map of every input; its
pre-activation map ``s_k`` at each enabled site modulates the classifier's pre-activation
``a_k`` there: ``h_k = ReLU(a_k * s_k)`` (``mode: multiply``), ``s_k`` detached.

One training step (the engine does one backward of the summed terms, then steps every
optimizer; the detach makes this identical to SER's two separate updates):

* stream rows: the branch runs in train mode (BN batch statistics, dropout) with gradient; its
  KL saliency loss against the rows' target maps is the term ``sal_kl``, stepped by the
  saliency optimizer; the classifier sees the detached ``s_k``;
* replay rows (the base strategy's draws, or rows ER appends to the stream batch): the branch
  runs in eval mode without gradient;
* evaluation: eval mode, no gradient; the classifier stays modulated.

The classifier's optimizer never sees the branch's parameters and the branch never receives
classification gradient. ``frozen: true`` keeps the branch in eval mode without optimizer or
loss (SER's ``--saliency_frozen``). Target maps, keyed by image content, come from
:mod:`cl_framework.saliency.targets`; when the module augments training images, the stream rows
are re-augmented here jointly with their maps (same crop and flip). See ``docs/sam.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl_framework.backbones.taps import TapModifier
from cl_framework.engine.plugin import (
    ROLE_STREAM,
    Batch,
    ForwardOutput,
    StrategyContext,
    StrategyPlugin,
)
from cl_framework.errors import ConfigError
from cl_framework.saliency import sources as _sources  # noqa: F401  (registers 'derived')
from cl_framework.saliency.branch import (
    SaliencyBranch,
    load_branch,
    reset_parameters,
    tap_shapes,
)
from cl_framework.saliency.loss import kl_saliency
from cl_framework.saliency.modulation import MODES, build_modulation
from cl_framework.saliency.targets import (
    KINDS,
    DiskLayout,
    SaliencyTable,
    build_table,
    disk_maps,
    file_digest,
    network_maps,
    spectral_residual_maps,
)
from cl_framework.scenarios import Experience, Split
from cl_framework.scenarios.images import parse_size
from cl_framework.scenarios.transforms import BatchTransform
from cl_framework.strategies.registry import register_strategy

log = logging.getLogger(__name__)

SCHEDULERS = ("exponential",)
_BRANCH_SEED = 7_919  # offset of the saliency branch's initialisation seed from the run seed


@dataclass
class _Pending:
    """What ``prepare_batch`` leaves for the next stream forward: stream rows and their maps."""

    n_stream: int
    maps: torch.Tensor


@register_strategy
class SAM(StrategyPlugin):
    name = "sam"
    needs_in_memory_data = True  # saliency targets of every training image

    @dataclass
    class Config:
        mode: str = "multiply"
        blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 1])
        frozen: bool = False
        coeff: float = 1.0
        lr: float = 0.005
        cnn_lr_factor: float = 0.1
        momentum: float = 0.9
        weight_decay: float = 1e-4
        cnn_weight_decay: float = 1e-5
        scheduler: str | None = None
        scheduler_gamma: float = 0.999
        checkpoint: str | None = None
        init_classifier: bool = False
        decoder_dropout: float = 0.6
        decoder_bn_momentum: float = 0.01
        targets: str = "spectral_residual"
        targets_root: str | None = None
        targets_image_size: Any = None
        targets_interpolation: str = "bilinear"
        teacher_checkpoint: str | None = None
        cache_dir: str = "saliency_cache"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        _validate(cfg)
        self.branch: SaliencyBranch | None = None
        self.modulators = nn.ModuleDict()
        self.sites: tuple[str, ...] = ()
        self.table: SaliencyTable | None = None
        self.targets_computed = 0
        self.sal_epochs = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending: _Pending | None = None
        self._loss: torch.Tensor | None = None
        self._joint: BatchTransform | None = None

    # ------------------------------------------------------------------------------ setup
    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        cfg = self.cfg
        backbone = ctx.module.backbone
        input_shape = tuple(int(d) for d in ctx.scenario.input_shape)
        seed = (ctx.runner.seed if ctx.runner is not None else 0) + _BRANCH_SEED
        encoder = copy.deepcopy(backbone)
        reset_parameters(encoder, seed)
        self.branch = SaliencyBranch(
            encoder,
            input_shape,  # type: ignore[arg-type]
            dropout=cfg.decoder_dropout,
            bn_momentum=cfg.decoder_bn_momentum,
        )
        names = self.branch.tap_names
        if len(cfg.blocks) != len(names):
            raise ConfigError(
                "strategy.sam.blocks",
                f"needs one 0/1 flag per modulation site {list(names)}, got {list(cfg.blocks)}",
                fix=f"e.g. blocks={[1] * len(names)}",
            )
        self.sites = tuple(n for n, on in zip(names, cfg.blocks, strict=True) if on)
        classifier_shapes = tap_shapes(backbone, input_shape)  # type: ignore[arg-type]
        for site in self.sites:
            shape = self.branch.tap_shapes[site]
            if classifier_shapes[site] != shape or len(shape) != 3:
                raise ConfigError(
                    "strategy.sam.blocks",
                    f"site '{site}' has shape {classifier_shapes[site]} in the classifier and "
                    f"{shape} in the saliency encoder; modulation needs equal conv maps",
                    fix="enable only convolutional sites",
                )
            self.modulators[site] = build_modulation(cfg.mode, shape[0])
        if cfg.checkpoint:
            load_branch(self.branch, cfg.checkpoint, "strategy.sam.checkpoint")
        if cfg.init_classifier:
            backbone.load_state_dict(self.branch.encoder.state_dict())
        if cfg.frozen:
            self.branch.requires_grad_(False)
            self.branch.eval()
            if not cfg.checkpoint:
                log.warning("SAM: frozen saliency branch without checkpoint (random weights)")
        else:
            self.table = self._build_targets(ctx)
        transform = ctx.module.transform
        if transform.augments:
            self._joint = BatchTransform(
                crop_padding=transform.crop_padding, hflip=transform.hflip, seed=seed
            )

    def _build_targets(self, ctx: StrategyContext) -> SaliencyTable:
        cfg = self.cfg
        images = torch.cat([exp.train.x for exp in ctx.scenario])
        cache_dir = Path(cfg.cache_dir)
        if cfg.targets == "spectral_residual":
            table, computed = build_table(
                "spectral_residual", images, cache_dir, make_maps=spectral_residual_maps
            )
        elif cfg.targets == "teacher":
            if not cfg.teacher_checkpoint:
                raise ConfigError(
                    "strategy.sam.teacher_checkpoint",
                    "targets=teacher needs the saliency checkpoint to run",
                    fix="set strategy.sam.teacher_checkpoint=<file>",
                )
            assert self.branch is not None
            teacher = copy.deepcopy(self.branch)
            load_branch(teacher, cfg.teacher_checkpoint, "strategy.sam.teacher_checkpoint")
            device = ctx.runner.device if ctx.runner is not None else torch.device("cpu")
            teacher.to(device).eval()
            to_float = ctx.module.transform.to_float

            def predict(x: torch.Tensor) -> torch.Tensor:
                return teacher(to_float(x.to(device)))[0]

            table, computed = build_table(
                "teacher",
                images,
                cache_dir,
                make_maps=lambda x: network_maps(predict, x),
                options=(file_digest(cfg.teacher_checkpoint),),
            )
        else:  # disk
            if not cfg.targets_root:
                raise ConfigError(
                    "strategy.sam.targets_root",
                    "targets=disk needs the folder holding images/ and annotations/",
                    fix="set strategy.sam.targets_root=<dataset folder>",
                )
            size = parse_size(cfg.targets_image_size, key="strategy.sam.targets_image_size")
            layout = DiskLayout(
                root=Path(cfg.targets_root).expanduser(),
                class_names=ctx.scenario.class_names,
                image_size=size,
                interpolation=cfg.targets_interpolation,
                channels=int(images.shape[1]),
            )
            out_size = (int(images.shape[2]), int(images.shape[3]))
            table, computed = build_table(
                "disk",
                images,
                cache_dir,
                make_keyed_maps=lambda: disk_maps(layout, out_size),
                options=(str(layout.root.resolve()), size, cfg.targets_interpolation),
            )
        self.targets_computed = computed
        return table

    # ------------------------------------------------------------------ runner-level hooks
    def train_data(self, experience: Experience, split: Split) -> Split:
        """Maps follow rows whose images an earlier plug-in changed (e.g. the signature probe).

        Targets were computed on the experience's original training images; a split of the same
        length is taken row by row as their edited versions, so its images find those maps.
        """
        original = experience.train
        if (
            self.table is not None
            and split is not original
            and len(split) == len(original)
            and not torch.equal(split.x, original.x)
        ):
            self.table.add_aliases(original.x, split.x)
        return split

    def on_epoch_end(self, epoch: int) -> None:
        if self.cfg.scheduler == "exponential" and self._optimizer is not None:
            self.sal_epochs += 1
            self._apply_schedule()

    # -------------------------------------------------------------------- step-level hooks
    def prepare_batch(self, batch: Batch) -> Batch:
        if self.table is None:  # frozen: no targets, no saliency loss
            return batch
        n = batch.n_stream
        x_raw = batch.x_raw[:n]
        maps = self.table.lookup(x_raw)
        if self._joint is not None:
            # re-augment the stream rows together with their maps (same crop, same flip)
            c = x_raw.shape[1]
            joint = self._joint.train(torch.cat([x_raw, maps], 1))
            x_stream = self.module.transform.to_float(joint[:, :c])
            batch = dataclasses.replace(batch, x=torch.cat([x_stream, batch.x[n:]]))
            maps = joint[:, c:]
        self._pending = _Pending(n_stream=n, maps=maps)
        return batch

    def tap_modifiers(self, x: torch.Tensor, role: str) -> Mapping[str, TapModifier]:
        branch = self.branch
        assert branch is not None
        pending = None
        if role == ROLE_STREAM:  # the first stream forward after prepare_batch takes the maps
            pending, self._pending = self._pending, None
        if pending is not None and not self.cfg.frozen:
            n = min(pending.n_stream, len(x))
            branch.train(self.training)
            predicted, taps = branch(x[:n])
            self._loss = self.cfg.coeff * kl_saliency(predicted, pending.maps[:n])
            parts = [{site: taps[site].detach() for site in self.sites}]
            if n < len(x):  # rows appended to the stream batch (ER): buffer samples
                parts.append(self._eval_features(x[n:]))
            feats = (
                parts[0]
                if len(parts) == 1
                else {site: torch.cat([p[site] for p in parts]) for site in self.sites}
            )
        else:
            feats = self._eval_features(x)
        return {site: self._modifier(site, feats[site]) for site in self.sites}

    def _eval_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Saliency-encoder maps of buffer / evaluation samples: eval mode, no gradient."""
        branch = self.branch
        assert branch is not None
        was_training = branch.training
        branch.eval()
        try:
            with torch.no_grad():
                _, taps = branch(x)
        finally:
            branch.train(was_training and not self.cfg.frozen)
        return {site: taps[site] for site in self.sites}

    def _modifier(self, site: str, s: torch.Tensor) -> TapModifier:
        module = self.modulators[site]

        def modulate(a: torch.Tensor) -> torch.Tensor:
            if a.shape != s.shape:
                raise RuntimeError(
                    f"SAM site '{site}': classifier map {tuple(a.shape)} vs saliency map "
                    f"{tuple(s.shape)}"
                )
            return module(a, s)

        return modulate

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        loss, self._loss = self._loss, None
        return {} if loss is None else {"sal_kl": loss}

    # ---------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The saliency optimizer, built once and kept across experiences (as SER's)."""
        if self.cfg.frozen:
            return []
        if self._optimizer is None:
            cfg, branch = self.cfg, self.branch
            assert branch is not None
            self._optimizer = torch.optim.SGD(
                [
                    {
                        "params": branch.encoder_parameters(),
                        "lr": cfg.lr * cfg.cnn_lr_factor,
                        "weight_decay": cfg.cnn_weight_decay,
                    },
                    {
                        "params": branch.decoder_parameters(),
                        "lr": cfg.lr,
                        "weight_decay": cfg.weight_decay,
                    },
                ],
                lr=cfg.lr,
                momentum=cfg.momentum,
            )
            self._apply_schedule()
        return [self._optimizer]

    def _apply_schedule(self) -> None:
        """ExponentialLR by hand: lr = base * gamma**epochs (restorable from ``sal_epochs``)."""
        if self._optimizer is None:
            return
        decay = self.cfg.scheduler_gamma**self.sal_epochs if self.cfg.scheduler else 1.0
        base = (self.cfg.lr * self.cfg.cnn_lr_factor, self.cfg.lr)
        for group, lr in zip(self._optimizer.param_groups, base, strict=True):
            group["lr"] = lr * decay

    def main_parameters(self) -> Iterable[nn.Parameter]:
        return self.modulators.parameters()

    # --------------------------------------------------------------------------- state
    def plugin_state(self) -> dict[str, Any]:
        joint = self._joint.state_dict() if self._joint is not None else {}
        return {
            "sal_epochs": self.sal_epochs,
            "joint_rng": {k: v.tolist() for k, v in joint.items()},
        }

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        self.sal_epochs = int(state.get("sal_epochs", 0))
        self._apply_schedule()
        if self._joint is not None and state.get("joint_rng"):
            self._joint.load_state_dict(
                {k: torch.tensor(v, dtype=torch.uint8) for k, v in state["joint_rng"].items()}
            )


def _validate(cfg: SAM.Config) -> None:
    key = "strategy.sam"
    if cfg.mode not in MODES:
        raise ConfigError(f"{key}.mode", f"unknown mode '{cfg.mode}'", fix=f"use one of {MODES}")
    if not cfg.blocks or any(b not in (0, 1) for b in cfg.blocks) or not any(cfg.blocks):
        raise ConfigError(
            f"{key}.blocks", f"must be 0/1 flags with at least one 1, got {list(cfg.blocks)}"
        )
    if cfg.targets not in KINDS:
        raise ConfigError(
            f"{key}.targets", f"unknown targets '{cfg.targets}'", fix=f"use one of {KINDS}"
        )
    if cfg.scheduler is not None and cfg.scheduler not in SCHEDULERS:
        raise ConfigError(
            f"{key}.scheduler",
            f"unknown scheduler '{cfg.scheduler}'",
            fix="use null or exponential",
        )
    for name in ("lr", "coeff", "cnn_lr_factor"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{key}.{name}", "must be >= 0")
    if not 0.0 <= cfg.decoder_dropout < 1.0:
        raise ConfigError(f"{key}.decoder_dropout", "must be in [0, 1)")
