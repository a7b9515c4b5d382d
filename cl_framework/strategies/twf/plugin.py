"""Transfer without Forgetting (TwF; Boschini et al., ECCV 2022) as a strategy plug-in.

A frozen pretrained sibling (the teacher) runs next to the student, which starts from the same
weights with fresh output heads over all classes. For every tapped layer a task-conditioned
attention module turns the sibling's map into a binary mask, and the student's pre-activation
map is pulled towards the sibling's where the mask is on (feature propagation, FP). Replay is
DER++-style (labels with CE, logits with MSE) from the shared buffer, which also stores each
row's masks and replays them (BCE on the attention logits). Reference: ``twf.md`` §2.

One step (stream rows ``x``, buffer rows ``x_b``):

    L = CE(f(x) over the current task's heads, y)              # engine's CE + logit_mask
      + beta  * CE(f(x_b) over the heads seen so far, y_b)      # twf_replay_ce
      + alpha * MSE(f(x_b), z_b)                                # twf_replay_mse
      + lambda_fp * mean_l [ d_l + lambda_div * div_l + lambda_fp_replay * rep_l ]
                                                                # twf_fp + twf_div + twf_mask_replay

Inference is the plain student: the attention modules and the sibling are used only by the
training loss and by the end-of-experience mask recomputation.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.backbones.taps import TapContext
from cl_framework.engine.plugin import Batch, ForwardOutput, StrategyContext
from cl_framework.errors import ConfigError
from cl_framework.scenarios import Experience
from cl_framework.strategies.pretrained import (
    WeightsConfig,
    load_pretrained,
    run_backbone_config,
    validate_weights_config,
)
from cl_framework.strategies.registry import register_strategy
from cl_framework.strategies.rehearsal import RehearsalPlugin
from cl_framework.strategies.twf.attention import (
    ATTENTION_MODES,
    AttentionModule,
    TaskGroups,
    binary_mask,
)
from cl_framework.strategies.twf.joint_transform import joint_crop_flip
from cl_framework.strategies.twf.losses import diversity_loss, fp_distance, mask_replay_loss

MASK_FIELD_PREFIX = "twf_mask_"
TEACHER_BN_MODES = ("eval", "train")
PROJECTION_INITS = ("normal", "kaiming")


@dataclass
class TwFConfig:
    """``strategy.twf``: defaults are Mammoth's stored best config (Seq-CIFAR-10, buffer 500)."""

    alpha: float = 0.3
    beta: float = 0.9
    lambda_fp: float = 0.0005
    lambda_div: float = 0.1
    lambda_fp_replay: float = 0.1
    minibatch_size: int = 32
    resize_maps: bool = True
    min_resize_threshold: int = 16
    teacher_bn: str = "eval"
    taps: list[str] | None = None
    attention_mode: str = "chsp"
    spatial_reduction: int = 4
    projection_init: str = "normal"
    gumbel_temperature: float = 2.0 / 3.0
    diversity_temperature: float = 2.0
    overhaul: bool = True
    stream_ce_current_task: bool = True
    recompute_masks: bool = True
    recompute_batch_size: int = 256
    sibling: WeightsConfig = field(default_factory=WeightsConfig)


def _as_4d(fm: torch.Tensor) -> torch.Tensor:
    """Vector taps (MLPs) as (B, C, 1, 1) maps, as the reference does for linear layers."""
    return fm.view(fm.shape[0], fm.shape[1], 1, 1) if fm.dim() == 2 else fm


@register_strategy
class TwF(RehearsalPlugin):
    """TwF: sibling-guided feature propagation with task-conditioned binary masks + DER++."""

    name = "twf"
    needs_taps = True
    Config = TwFConfig

    def __init__(self, cfg: TwFConfig) -> None:
        super().__init__(cfg)
        self._validate(cfg)
        self.attention = nn.ModuleDict()
        self.teacher: nn.Module | None = None
        self.tap_list: tuple[str, ...] = ()
        self.map_sizes: dict[str, tuple[int, int]] = {}
        self.current_task = 0
        self.sibling_description = ""
        self._seed = 0
        self._generators: dict[str, torch.Generator] = {}
        self._pending_generator_state: dict[str, torch.Tensor] = {}
        self._stream_masks: dict[str, torch.Tensor] = {}

    @staticmethod
    def _validate(cfg: TwFConfig) -> None:
        p = "strategy.twf"
        validate_weights_config(cfg.sibling, f"{p}.sibling")
        for key in ("alpha", "beta", "lambda_fp", "lambda_div", "lambda_fp_replay"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"{p}.{key}", f"must be >= 0, got {getattr(cfg, key)}")
        for key in ("gumbel_temperature", "diversity_temperature"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"{p}.{key}", f"must be > 0, got {getattr(cfg, key)}")
        for key in ("spatial_reduction", "recompute_batch_size", "min_resize_threshold"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"{p}.{key}", f"must be >= 1, got {getattr(cfg, key)}")
        if cfg.minibatch_size < 0:
            raise ConfigError(f"{p}.minibatch_size", f"must be >= 0, got {cfg.minibatch_size}")
        choices = {
            "teacher_bn": TEACHER_BN_MODES,
            "attention_mode": ATTENTION_MODES,
            "projection_init": PROJECTION_INITS,
        }
        for key, allowed in choices.items():
            if getattr(cfg, key) not in allowed:
                raise ConfigError(
                    f"{p}.{key}", f"unknown value '{getattr(cfg, key)}'", f"use one of {allowed}"
                )
        if cfg.taps is not None and not cfg.taps:
            raise ConfigError(f"{p}.taps", "empty list", "null (every tap) or some tap names")

    # ------------------------------------------------------------------ set-up
    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        backbone = ctx.module.backbone
        self.sibling_description = load_pretrained(
            backbone, self.cfg.sibling, "strategy.twf.sibling", run_backbone_config(ctx)
        )
        teacher = copy.deepcopy(backbone)
        for param in teacher.parameters():
            param.requires_grad_(False)
        self.teacher = teacher
        # The frozen sibling is in eval mode on purpose; Lightning warns about it at every fit.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start")

        names = tuple(backbone.tap_names)
        chosen = tuple(self.cfg.taps) if self.cfg.taps is not None else names
        unknown = [n for n in chosen if n not in names]
        if unknown or not chosen:
            raise ConfigError(
                "strategy.twf.taps",
                f"unknown tap(s) {unknown} for backbone {type(backbone).__name__}"
                if unknown
                else "the backbone has no feature taps",
                f"valid taps: {list(names)}",
            )
        self.tap_list = chosen
        shapes = self._probe_shapes(ctx.scenario.input_shape)
        n_tasks = 1 + max(exp.task_label for exp in ctx.scenario)
        self.attention = nn.ModuleDict(
            {
                name: AttentionModule(
                    shapes[name][0],
                    n_tasks,
                    reduction=self.cfg.spatial_reduction,
                    projection_init=self.cfg.projection_init,
                    mode=self.cfg.attention_mode,
                )
                for name in chosen
            }
        )
        self.map_sizes = {name: (shapes[name][1], shapes[name][2]) for name in chosen}
        n_heads = ctx.heads.n_heads
        self.register_buffer("current_heads", torch.ones(n_heads, dtype=torch.bool))
        self.register_buffer("seen_heads", torch.ones(n_heads, dtype=torch.bool))
        runner = ctx.runner
        self._seed = (runner.seed if runner is not None else 0) + 7919
        device = next(iter(ctx.module.parameters())).device
        self.to(device)
        self.train(ctx.module.training)

    @torch.no_grad()
    def _probe_shapes(self, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every chosen tap, from one forward of the sibling on zeros."""
        assert self.teacher is not None
        was_training = self.teacher.training
        self.teacher.eval()
        device = next(iter(self.teacher.parameters())).device
        taps = TapContext(record=self.tap_list)
        self.teacher(torch.zeros((2, *input_shape), device=device), taps)
        self.teacher.train(was_training)
        return {name: tuple(_as_4d(taps.records[name]).shape[1:]) for name in self.tap_list}

    def train(self, mode: bool = True) -> TwF:
        """The sibling keeps the configured BN mode whatever the module's mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(self.cfg.teacher_bn == "train")
        return self

    def main_parameters(self) -> list[nn.Parameter]:
        """The attention modules are trained by the main optimizer, as in the reference."""
        return list(self.attention.parameters())

    # ------------------------------------------------------------- experience
    def before_experience(self, experience: Experience) -> None:
        heads = self.module.heads
        scenario = self.ctx.scenario
        current = torch.zeros_like(self.current_heads)
        current[heads.heads_of(experience.classes).to(current.device)] = True
        seen = torch.zeros_like(self.seen_heads)
        seen[heads.heads_of(scenario.classes_up_to(experience.index)).to(seen.device)] = True
        self.current_heads = current
        self.seen_heads = seen
        self.current_task = int(experience.task_label)

    @torch.no_grad()
    def after_experience(self, experience: Experience) -> None:
        """Recompute the stored masks of exactly the buffer rows of this experience's task,
        with the final attention modules in eval mode (deterministic masks), un-augmented."""
        if not self.cfg.recompute_masks:
            return
        self.recompute_masks(int(experience.task_label))

    @torch.no_grad()
    def recompute_masks(self, task: int) -> torch.Tensor:
        """Rewrite the masks of the buffer rows whose task id is ``task``; returns their slots."""
        buffer = self.buffer
        if buffer.is_empty or self.mask_field(self.tap_list[0]) not in buffer.fields:
            return torch.zeros(0, dtype=torch.long)
        slots = (buffer.all(["t"])["t"] == task).nonzero().squeeze(1)
        module = self.module
        was_training = module.training
        module.eval()
        device = self._device()
        try:
            for chunk in slots.split(self.cfg.recompute_batch_size):
                rows = buffer.get(chunk, ["x", "t"])
                x = module.transform.to_float(rows["x"].to(device))
                masks = self.masks_for(x, rows["t"].to(device))
                buffer.update(
                    chunk, **{self.mask_field(n): self.storable(m) for n, m in masks.items()}
                )
        finally:
            module.train(was_training)
        return slots

    @torch.no_grad()
    def masks_for(self, x: torch.Tensor, tasks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masks of every tapped layer for float inputs ``x`` (current train/eval mode)."""
        fm_t = self.teacher_maps(x)
        groups = TaskGroups(tasks)
        out = {}
        for name in self.tap_list:
            attention = self.attention[name]
            z0, z1 = attention(fm_t[name], groups)
            out[name] = binary_mask(
                z0, z1, attention.training, self.cfg.gumbel_temperature, self._generator()
            )
        return out

    # ------------------------------------------------------------------- step
    def logit_mask(self, batch: Batch) -> torch.Tensor | None:
        """Stream CE over the current task's heads (reference: ``f(x)[:, n_past:n_seen]``);
        rows other plug-ins appended keep every head."""
        if not self.cfg.stream_ce_current_task:
            return None
        rows = batch.y.shape[0]
        if rows == batch.n_stream:
            return self.current_heads
        mask = self.current_heads.unsqueeze(0).repeat(rows, 1)
        mask[batch.n_stream :] = True
        return mask

    def loss_terms(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        cfg = self.cfg
        module = self.module
        n = batch.n_stream
        terms: dict[str, torch.Tensor] = {}
        x_all = batch.x[:n]
        tasks = batch.t[:n]
        fm_s = {name: _as_4d(out.taps[name][:n]) for name in self.tap_list}
        stored: dict[str, torch.Tensor] = {}
        forced = torch.zeros(n, dtype=torch.bool, device=x_all.device)

        if not self.buffer.is_empty and cfg.minibatch_size > 0:
            fields = ["x", "y", "t", "logits", *(self.mask_field(n_) for n_ in self.tap_list)]
            device = x_all.device
            sample = {
                k: v.to(device) for k, v in self.buffer.sample(cfg.minibatch_size, fields).items()
            }
            raw_masks = {name: sample[self.mask_field(name)] for name in self.tap_list}
            x_b, stored = joint_crop_flip(
                sample["x"],
                raw_masks,
                module.transform.crop_padding,
                module.transform.hflip,
                self._generator(),
            )
            x_b = module.transform.to_float(x_b)
            out_b = module.run_forward(x_b, "replay")
            logits_b = out_b.logits
            seen_logits = logits_b.masked_fill(~self.seen_heads, torch.finfo(logits_b.dtype).min)
            terms["twf_replay_ce"] = cfg.beta * F.cross_entropy(seen_logits, sample["y"])
            terms["twf_replay_mse"] = cfg.alpha * F.mse_loss(logits_b, sample["logits"])
            x_all = torch.cat([x_all, x_b])
            tasks = torch.cat([tasks, sample["t"]])
            fm_s = {name: torch.cat([fm_s[name], _as_4d(out_b.taps[name])]) for name in fm_s}
            forced = torch.cat([forced, sample["t"] != self.current_task])

        fp, div, rep, stream_masks = self.fp_terms(x_all, tasks, fm_s, forced, stored, n)
        self._stream_masks = stream_masks
        terms["twf_fp"] = cfg.lambda_fp * fp
        if cfg.lambda_div > 0:
            terms["twf_div"] = cfg.lambda_fp * cfg.lambda_div * div
        if rep is not None:
            terms["twf_mask_replay"] = cfg.lambda_fp * cfg.lambda_fp_replay * rep
        return terms

    def fp_terms(
        self,
        x: torch.Tensor,
        tasks: torch.Tensor,
        fm_s: Mapping[str, torch.Tensor],
        forced: torch.Tensor,
        stored: Mapping[str, torch.Tensor],
        n_stream: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Layer means of the FP distance, diversity and mask-replay terms (unweighted by
        lambda_fp; diversity and replay not yet weighted by their lambdas), plus the stream
        rows' storable masks.

        ``forced`` marks the rows from past tasks ("teacher-forced"); their stored masks
        (buffer rows only, rows ``n_stream:``) are in ``stored``.
        """
        cfg = self.cfg
        with torch.no_grad():
            fm_t = self.teacher_maps(x)
        groups = TaskGroups(tasks)
        n_forced = int(forced.sum())
        forced_b = forced[n_stream:]
        free = ~forced
        fp_sum = x.new_zeros(())
        div_sum = x.new_zeros(())
        rep_sum = x.new_zeros(())
        stream_masks: dict[str, torch.Tensor] = {}
        for name in self.tap_list:
            attention = self.attention[name]
            teacher = fm_t[name]
            z0, z1 = attention(teacher, groups)
            mask = binary_mask(
                z0, z1, attention.training, cfg.gumbel_temperature, self._generator()
            )
            rho = mask
            if n_forced:
                size = teacher.shape[-2:]
                target = stored[name][forced_b]
                if tuple(target.shape[-2:]) != tuple(size):
                    target = F.interpolate(target.float(), size=size, mode="nearest")
                target = target.to(mask.dtype)
                if cfg.lambda_fp_replay > 0:
                    rep_sum = rep_sum + mask_replay_loss(z0[n_stream:][forced_b], target)
                else:  # hard teacher forcing: past rows use their stored masks
                    full = mask.detach().clone()
                    full[n_stream:][forced_b] = target
                    keep = forced.view(-1, 1, 1, 1)
                    rho = torch.where(keep, full, mask)
            fp_sum = fp_sum + fp_distance(fm_s[name], teacher, rho, use_margin=cfg.overhaul)
            div_sum = div_sum + diversity_loss(rho[free], cfg.diversity_temperature)
            stream_masks[self.mask_field(name)] = self.storable(mask[:n_stream].detach())
        layers = len(self.tap_list)
        rep = rep_sum / layers if (n_forced and cfg.lambda_fp_replay > 0) else None
        return fp_sum / layers, div_sum / layers, rep, stream_masks

    def buffer_fields(self, batch: Batch, out: ForwardOutput) -> Mapping[str, torch.Tensor]:
        return {"logits": out.logits, **self._stream_masks}

    def after_train_step(self, batch: Batch, out: ForwardOutput) -> None:
        self._stream_masks = {}

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def mask_field(tap: str) -> str:
        """Buffer field holding the masks of tap ``tap``."""
        return f"{MASK_FIELD_PREFIX}{tap}"

    def storable(self, mask: torch.Tensor) -> torch.Tensor:
        """uint8 mask, halved (nearest) when ``resize_maps`` and its height >= the threshold."""
        h, w = mask.shape[-2:]
        if self.cfg.resize_maps and h >= self.cfg.min_resize_threshold:
            mask = F.interpolate(mask.float(), size=(h // 2, w // 2), mode="nearest")
        return mask.to(torch.uint8)

    @torch.no_grad()
    def teacher_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sibling's (detached) maps at the chosen taps."""
        assert self.teacher is not None
        taps = TapContext(record=self.tap_list)
        self.teacher(x, taps)
        return {name: _as_4d(taps.records[name]).detach() for name in self.tap_list}

    def _device(self) -> torch.device:
        return next(iter(self.module.parameters())).device

    def _generator(self) -> torch.Generator:
        """The plug-in's private generator on the training device (Gumbel noise, joint crops)."""
        device = self._device()
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self._seed)
            pending = self._pending_generator_state.pop(key, None)
            if pending is not None:
                gen.set_state(pending)
            self._generators[key] = gen
        return gen

    # ------------------------------------------------------------------ state
    def plugin_state(self) -> dict[str, Any]:
        generators = {k: g.get_state() for k, g in self._generators.items()}
        generators.update(
            {k: v for k, v in self._pending_generator_state.items() if k not in generators}
        )
        return {"current_task": self.current_task, "generators": generators}

    def load_plugin_state(self, state: Mapping[str, Any]) -> None:
        self.current_task = int(state.get("current_task", 0))
        self._generators = {}
        self._pending_generator_state = {
            str(k): v.cpu() for k, v in dict(state.get("generators", {})).items()
        }
