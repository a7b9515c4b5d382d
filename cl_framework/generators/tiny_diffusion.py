"""Our small class-conditional diffusion model: the offline, CPU-sized Dream2Learn generator.

A DDPM (Ho et al., 2020) with a cosine noise schedule (Nichol & Dhariwal, 2021) and
classifier-free guidance (Ho & Salimans, 2022), epsilon-prediction with a compact U-Net. It is
conditioned by a class **embedding** vector (``prompt_dim`` wide); that embedding space is the
soft-prompt space of Dream2Learn: a learned class embedding is a "hard" prompt, any other vector
in the space a soft one. Sampling is deterministic DDIM (Song et al., 2021, eta = 0) with few
steps; with a prompt that requires grad, each U-Net call is gradient-checkpointed so the
classifier's gradient reaches the prompt at the memory cost of one call.

``clf-pretrain-generator`` (:mod:`cl_framework.pretrain_generator`) trains it on an auxiliary
dataset and writes ``{"state_dict", "meta"}`` (``weights_only``-loadable); the backend loader
below rebuilds the model from ``meta["model"]`` and freezes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cl_framework.errors import ConfigError
from cl_framework.generators import register_backend
from cl_framework.generators.base import ConditionalGenerator, match_shape, seeded_noise

FORMAT = "cl_framework.tiny_diffusion/1"


@dataclass
class TinyDiffusionConfig:
    """Architecture and noise schedule (``model`` node of ``clf-pretrain-generator``)."""

    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    n_classes: int = 10
    base_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    prompt_dim: int = 64
    emb_dim: int = 128
    timesteps: int = 1000
    cond_dropout: float = 0.1  # probability of the null prompt in training (for guidance)

    def validate(self, key: str = "model") -> None:
        c, h, w = self.image_shape
        factor = 2 ** (len(self.channel_mult) - 1)
        if h % factor or w % factor:
            raise ConfigError(
                f"{key}.channel_mult",
                f"{len(self.channel_mult) - 1} down-samplings need H and W divisible by {factor}, "
                f"the images are {h} x {w}",
                "use fewer levels or resize the data (data.resize_to)",
            )
        for name in ("n_classes", "base_channels", "prompt_dim", "emb_dim", "timesteps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}", "must be positive")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"{key}.cond_dropout", "must be in [0, 1)")
        if c not in (1, 3):
            raise ConfigError(f"{key}.image_shape", f"1 or 3 channels, got {c}")


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """(timesteps,) cumulative signal rates alpha_bar_t of the cosine schedule (t = 1..T)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Transformer positional encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Conv residual block whose activations are shifted/scaled by the conditioning vector."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class TinyUNet(nn.Module):
    """A two-to-three level U-Net: eps = f(x_t, t, prompt); ``prompt`` is (B, prompt_dim)."""

    def __init__(self, cfg: TinyDiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.image_shape[0]
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        self.time = nn.Sequential(
            nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim)
        )
        self.cond = nn.Sequential(
            nn.Linear(cfg.prompt_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim)
        )
        self.conv_in = nn.Conv2d(c, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = chans[0]
        for i, ch in enumerate(chans):
            self.down.append(ResBlock(prev, ch, cfg.emb_dim))
            prev = ch
            last = i == len(chans) - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            )
        self.mid = nn.ModuleList([ResBlock(prev, prev, cfg.emb_dim) for _ in range(2)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            self.up.append(ResBlock(prev + ch, ch, cfg.emb_dim))
            prev = ch
            self.upsample.append(
                nn.Identity() if i == 0 else nn.ConvTranspose2d(ch, chans[i - 1], 4, 2, 1)
            )
            if i > 0:
                prev = chans[i - 1]
        self.norm_out = _norm(prev)
        self.conv_out = nn.Conv2d(prev, c, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.cfg.emb_dim)) + self.cond(prompt)
        h = self.conv_in(x)
        skips = []
        for block, down in zip(self.down, self.downsample, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, emb)
        for block, up in zip(self.up, self.upsample, strict=True):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class TinyDiffusion(ConditionalGenerator):
    """The U-Net, the learned class embeddings (+ a null embedding) and the schedule.

    Training (:meth:`loss`) uses it as an ordinary module; as a Dream2Learn generator it is
    frozen and sampled with :meth:`generate` (DDIM, ``sample_steps`` steps, guidance
    ``guidance_scale``; 1.0 = no unconditional pass).
    """

    backend = "tiny_diffusion"

    def __init__(
        self,
        cfg: TinyDiffusionConfig,
        sample_steps: int = 10,
        guidance_scale: float = 2.0,
        img2img_strength: float = 0.6,
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.unet = TinyUNet(cfg)
        # row n_classes is the null (unconditional) prompt
        self.embedding = nn.Embedding(cfg.n_classes + 1, cfg.prompt_dim)
        nn.init.normal_(self.embedding.weight, std=1.0)
        self.register_buffer("alpha_bar", cosine_alpha_bar(cfg.timesteps), persistent=False)
        self.sample_steps = int(sample_steps)
        self.guidance_scale = float(guidance_scale)
        self.img2img_strength = float(img2img_strength)
        self.class_names = list(class_names)
        self._frozen = False

    # ------------------------------------------------------------- interface
    def freeze(self) -> TinyDiffusion:
        self._frozen = True
        super().freeze()
        return self

    def train(self, mode: bool = True) -> TinyDiffusion:
        # trainable while pre-training; frozen generators always stay in eval mode
        return nn.Module.train(self, mode and not self._frozen)

    @property
    def prompt_shape(self) -> tuple[int, ...]:
        return (self.cfg.prompt_dim,)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.cfg.image_shape
        return (c, h, w)

    @property
    def n_classes(self) -> int:
        return self.cfg.n_classes

    @property
    def null_prompt(self) -> torch.Tensor:
        return self.embedding.weight[self.cfg.n_classes]

    def init_prompt(self, source_class: int | None, generator: torch.Generator) -> torch.Tensor:
        """A class's learned embedding, or a random vector with the embeddings' mean norm."""
        table = self.embedding.weight.detach()[: self.cfg.n_classes]
        if source_class is not None:
            if not 0 <= source_class < self.cfg.n_classes:
                raise ValueError(f"source class {source_class} not in 0..{self.cfg.n_classes - 1}")
            return table[source_class].clone()
        direction = torch.randn(self.cfg.prompt_dim, generator=generator).to(table.device)
        return direction / direction.norm() * table.norm(dim=1).mean()

    # -------------------------------------------------------------- training
    def loss(
        self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Epsilon-prediction MSE on a batch (x0 in [-1, 1]); labels dropped to null at random."""
        b = len(x0)
        device = x0.device
        t = torch.randint(0, self.cfg.timesteps, (b,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        drop = torch.rand(b, generator=generator).to(device) < self.cfg.cond_dropout
        labels = torch.where(drop, torch.full_like(labels, self.cfg.n_classes), labels)
        ab = self.alpha_bar[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return F.mse_loss(self.unet(x_t, t, self.embedding(labels)), noise)

    # -------------------------------------------------------------- sampling
    def _eps(self, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """Guided noise estimate for one timestep; ``cond`` is (B, prompt_dim)."""
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        w = self.guidance_scale
        if w == 1.0:
            return self._unet(x, tt, cond)
        null = self.null_prompt.expand_as(cond)
        both = self._unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null]))
        eps_c, eps_u = both.chunk(2)
        return eps_u + w * (eps_c - eps_u)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and cond.requires_grad:
            return checkpoint(self.unet, x, t, cond, use_reentrant=False)
        return self.unet(x, t, cond)

    def timesteps(self, strength: float = 1.0) -> list[int]:
        """The DDIM timesteps, descending; ``strength`` < 1 keeps only the last part (img2img)."""
        steps = torch.linspace(self.cfg.timesteps - 1, 0, self.sample_steps).round().long()
        keep = max(1, round(self.sample_steps * strength))
        return steps[-keep:].tolist()

    def _generate(
        self,
        prompt: torch.Tensor,
        n: int,
        seed: int,
        init_images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        device = self.embedding.weight.device
        shape = (n, *self.image_shape)
        noise = seeded_noise(shape, seed, device)
        cond = prompt.to(device).unsqueeze(0).expand(n, -1)
        if init_images is None:
            steps = self.timesteps()
            x = noise
        else:
            steps = self.timesteps(self.img2img_strength)
            x0 = match_shape(init_images.to(device).float(), self.image_shape) * 2 - 1
            x0 = x0[torch.arange(n, device=device) % len(x0)]
            ab = self.alpha_bar[steps[0]]
            x = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        for i, t in enumerate(steps):
            eps = self._eps(x, t, cond)
            ab = self.alpha_bar[t]
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            if i + 1 == len(steps):
                x = x0
            else:
                ab_next = self.alpha_bar[steps[i + 1]]
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # consistent with the clamped x0
                x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return (x + 1) / 2

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sample_steps": self.sample_steps,
            "guidance_scale": self.guidance_scale,
            "class_names": self.class_names,
        }


# ----------------------------------------------------------------------- files
def checkpoint_payload(model: TinyDiffusion, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What ``clf-pretrain-generator`` writes: weights + the config needed to rebuild them."""
    return {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {**meta, "model": asdict(model.cfg)},
    }


def load_tiny_diffusion(
    path: str | None, options: Mapping[str, Any], device: torch.device
) -> TinyDiffusion:
    """The ``tiny_diffusion`` backend: rebuild and load a ``clf-pretrain-generator`` checkpoint.

    ``options``: ``sample_steps`` (DDIM steps, default 10), ``guidance_scale`` (default 2.0),
    ``img2img_strength`` (default 0.6).
    """
    key = "strategy.d2l.generator"
    fix = "train one with: clf-pretrain-generator experiment=pretrain/generator-fashion-mnist"
    if not path:
        raise ConfigError(f"{key}.path", "is required for the tiny_diffusion backend", fix)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}.path", f"no generator checkpoint at '{file}'", fix)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, pickled object, not a torch file
        raise ConfigError(
            f"{key}.path", f"'{file}' is not a loadable generator checkpoint ({exc})", fix
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(
            f"{key}.path",
            f"'{file}' is not a tiny_diffusion checkpoint (format {payload.get('format')!r})"
            if isinstance(payload, dict)
            else f"'{file}' is not a tiny_diffusion checkpoint",
            fix,
        )
    unknown = set(options) - {"sample_steps", "guidance_scale", "img2img_strength"}
    if unknown:
        raise ConfigError(
            f"{key}.options.{sorted(unknown)[0]}",
            "unknown option of the tiny_diffusion backend",
            "use sample_steps, guidance_scale, img2img_strength",
        )
    meta = payload["meta"]
    model = TinyDiffusion(
        TinyDiffusionConfig(**meta["model"]),
        sample_steps=int(options.get("sample_steps", 10)),
        guidance_scale=float(options.get("guidance_scale", 2.0)),
        img2img_strength=float(options.get("img2img_strength", 0.6)),
        class_names=meta.get("class_names", ()),
    )
    if model.sample_steps <= 0:
        raise ConfigError(f"{key}.options.sample_steps", "must be positive")
    model.load_state_dict(payload["state_dict"])
    return model.to(device)


register_backend("tiny_diffusion", load_tiny_diffusion)
