"""The ``diffusers`` backend: a frozen Stable-Diffusion-family model driven by soft prompts.

**Published (Dream2Learn, arXiv 2603.01935):** the dream source is a *frozen* latent diffusion
model conditioned by *soft prompts* that are optimised with a loss computed by the continual
learner's classifier; the generator's weights never change.

**Our choices (not from the paper):**

* The soft prompt is a sequence of ``n_tokens`` **prompt token embeddings** (shape
  ``(n_tokens, hidden)``, the CLIP token-embedding width). They replace the token embeddings of
  ``n_tokens`` placeholder positions of the text encoder's input: by default right after the BOS
  token and before a fixed tail built from a text template (``"a photo of"``), then EOS and
  padding to the tokenizer's length (77 for SD). A ``{}`` in the template moves the slot there
  (``"a photo of {}"``). The splice is a forward hook on the text encoder's input-embedding module
  (``get_input_embeddings()``), so the model's own forward (positions, causal mask, attention
  kernel) runs unchanged on every ``transformers`` version; the encoder output conditions the
  UNet as SD's ``encoder_hidden_states``.
* Sampling is **few-step deterministic DDIM** (eta = 0; ``num_inference_steps``, default 6) with
  the model's own scheduler config, and classifier-free guidance (``guidance_scale``, default
  4.0; the unconditional branch is the empty-prompt embedding, 1.0 turns guidance off).
* Each UNet call is **gradient-checkpointed** (``use_reentrant=False``): the classifier's gradient
  reaches the prompt through every denoising step while only each step's inputs are stored.
* The initial latent noise comes from :func:`~cl_framework.generators.base.seeded_noise`, so the
  same prompt and seed give the same images.
* Optional image-to-image: init images are VAE-encoded (latent mean, deterministic), noised to
  ``strength`` (default 0.6) with the scheduler's ``add_noise``, and only the remaining steps run.
* A class's starting prompt is the token embeddings of its name (``class_names`` option), cycled
  or truncated to ``n_tokens``; without a class, a random prompt has the token table's row norms.

``diffusers`` and ``transformers`` are an optional extra (``pip install -e '.[diffusers]'``);
this module imports them only when a generator is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cl_framework.errors import ConfigError
from cl_framework.generators import register_backend
from cl_framework.generators.base import ConditionalGenerator, match_shape, seeded_noise

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

KEY = "strategy.d2l.generator"
INSTALL_FIX = "pip install -e '.[diffusers]'"
DEFAULT_TEMPLATE = "a photo of"
#: ``template_ids`` entry that marks the soft-prompt slot (like ``{}`` in ``template``).
SLOT_ID = -1
OPTIONS = (
    "n_tokens",
    "template",
    "template_ids",
    "class_names",
    "class_token_ids",
    "num_inference_steps",
    "guidance_scale",
    "strength",
    "resolution",
    "gradient_checkpointing",
    "local_files_only",
    "torch_dtype",
    "revision",
    "components",
)
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _require_packages() -> None:
    """Turn a missing optional extra into a ConfigError that says how to install it."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{KEY}.backend",
            f"the diffusers backend needs the packages diffusers and transformers ({exc})",
            INSTALL_FIX,
        ) from None


def _ddim(scheduler: Any | None) -> Any:
    """A deterministic DDIM scheduler built from the model's scheduler config (any class).

    Without one, SD v1's noise schedule (scaled-linear betas 0.00085..0.012, no sample clipping).
    """
    from diffusers import DDIMScheduler

    if scheduler is None:
        return DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
    config = scheduler if isinstance(scheduler, Mapping) else scheduler.config
    return DDIMScheduler.from_config(config)


class DiffusersGenerator(ConditionalGenerator):
    """UNet + VAE + CLIP text encoder (+ tokenizer) + DDIM, conditioned by prompt embeddings.

    Every weight is frozen at construction (``requires_grad=False``, eval mode): only the soft
    prompt passed to :meth:`generate` receives gradients.
    """

    backend = "diffusers"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: nn.Module,
        scheduler: Any | None = None,
        tokenizer: Any | None = None,
        *,
        n_tokens: int = 4,
        template: str | None = None,
        template_ids: Sequence[int] | None = None,
        class_names: Sequence[str] = (),
        class_token_ids: Sequence[Sequence[int]] | None = None,
        num_inference_steps: int = 6,
        guidance_scale: float = 4.0,
        strength: float = 0.6,
        resolution: int | None = None,
        gradient_checkpointing: bool = True,
        source: str | None = None,
    ) -> None:
        super().__init__()
        opt = f"{KEY}.options"
        if getattr(unet.config, "addition_embed_type", None) or getattr(
            unet.config, "class_embed_type", None
        ):
            raise ConfigError(
                f"{KEY}.path",
                "the UNet needs extra conditioning (SDXL-style added embeddings or class labels)",
                "use a Stable Diffusion 1.x / 2.x model (text-conditioned UNet only)",
            )
        if not hasattr(text_encoder, "get_input_embeddings"):
            raise ConfigError(
                f"{opt}.components.text_encoder",
                f"{type(text_encoder).__name__} has no get_input_embeddings()",
                "pass a transformers.CLIPTextModel",
            )
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler = _ddim(scheduler)
        self.tokenizer = tokenizer
        self.source = source

        table = text_encoder.get_input_embeddings()
        self.hidden = int(table.weight.shape[1])
        text_width = int(getattr(text_encoder.config, "hidden_size", self.hidden))
        cross = unet.config.cross_attention_dim
        if cross != text_width:
            raise ConfigError(
                f"{KEY}.path",
                f"the UNet's cross_attention_dim ({cross}) differs from the text encoder's "
                f"width ({text_width})",
                "use the text encoder that belongs to the UNet",
            )

        # numbers ---------------------------------------------------------------------------
        self.n_tokens = int(n_tokens)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.strength = float(strength)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.n_tokens <= 0:
            raise ConfigError(f"{opt}.n_tokens", "must be positive")
        if self.num_inference_steps <= 0:
            raise ConfigError(f"{opt}.num_inference_steps", "must be positive")
        if self.guidance_scale < 1.0:
            raise ConfigError(f"{opt}.guidance_scale", "must be >= 1.0", "1.0 turns guidance off")
        if not 0.0 < self.strength <= 1.0 or int(self.num_inference_steps * self.strength) < 1:
            raise ConfigError(
                f"{opt}.strength",
                f"{self.strength} leaves no denoising step of {self.num_inference_steps} for "
                "image-to-image (the prompt would have no effect)",
                "use a strength in (0, 1] with strength * num_inference_steps >= 1",
            )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        native = int(unet.config.sample_size) * self.vae_scale_factor
        self.resolution = int(resolution) if resolution is not None else native
        if self.resolution <= 0 or self.resolution % self.vae_scale_factor:
            raise ConfigError(
                f"{opt}.resolution",
                f"{self.resolution} is not a positive multiple of the VAE's down-sampling "
                f"factor {self.vae_scale_factor}",
                f"use e.g. {native}",
            )

        # token ids -------------------------------------------------------------------------
        self._set_special_ids()
        prefix, suffix = self._template_ids(template, template_ids)
        self.template = template if template_ids is None else None
        self._slot = 1 + len(prefix)
        ids = [self.bos_id, *prefix, *[self.pad_id] * self.n_tokens, *suffix, self.eos_id]
        if len(ids) > self.max_length:
            raise ConfigError(
                f"{opt}.n_tokens",
                f"{self.n_tokens} prompt tokens + the template need {len(ids)} positions, the "
                f"text encoder has {self.max_length}",
                "use fewer tokens or a shorter template",
            )
        self.register_buffer("prompt_ids", self._padded(ids), persistent=False)
        self.register_buffer(
            "uncond_ids", self._padded([self.bos_id, self.eos_id]), persistent=False
        )
        self._uncond_cache: tuple[tuple[torch.device, torch.dtype], torch.Tensor] | None = None

        # classes ---------------------------------------------------------------------------
        self.class_names = [str(c) for c in class_names]
        if class_token_ids is not None:
            if self.class_names and len(class_token_ids) != len(self.class_names):
                raise ConfigError(
                    f"{opt}.class_token_ids",
                    f"{len(class_token_ids)} entries for {len(self.class_names)} class names",
                )
            self._class_ids = [[int(i) for i in row] for row in class_token_ids]
        elif self.class_names:
            if tokenizer is None:
                raise ConfigError(
                    f"{opt}.class_names",
                    "class names need a tokenizer",
                    "load a model with a tokenizer/ folder or give class_token_ids",
                )
            self._class_ids = [self._tokenize(name.replace("_", " ")) for name in self.class_names]
        else:
            self._class_ids = []
        for k, row in enumerate(self._class_ids):
            if not row:
                raise ConfigError(f"{opt}.class_names", f"class {k} has no tokens")
        self.freeze()

    # ---------------------------------------------------------------------------- token ids
    def _set_special_ids(self) -> None:
        """BOS / EOS / pad ids and sequence length: from the tokenizer, else the text config."""
        config = self.text_encoder.config
        positions = int(getattr(config, "max_position_embeddings", 77))
        tok = self.tokenizer
        if tok is not None:
            self.bos_id = int(tok.bos_token_id)
            self.eos_id = int(tok.eos_token_id)
            pad = tok.pad_token_id
            length = getattr(tok, "model_max_length", positions) or positions
            self.max_length = min(int(length), positions)
        else:
            self.bos_id = int(config.bos_token_id)
            self.eos_id = int(config.eos_token_id)
            pad = getattr(config, "pad_token_id", None)
            self.max_length = positions
        self.pad_id = int(pad) if pad is not None else self.eos_id

    def _tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS / EOS."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _template_ids(
        self, template: str | None, template_ids: Sequence[int] | None
    ) -> tuple[list[int], list[int]]:
        """Ids before and after the prompt slot (slot = ``{}`` / -1, else right after BOS)."""
        opt = f"{KEY}.options"
        if template_ids is not None:
            if template is not None:
                raise ConfigError(f"{opt}.template", "give template or template_ids, not both")
            ids = [int(i) for i in template_ids]
            if ids.count(SLOT_ID) > 1:
                raise ConfigError(f"{opt}.template_ids", f"{SLOT_ID} (the slot) appears twice")
            if SLOT_ID in ids:
                at = ids.index(SLOT_ID)
                return ids[:at], ids[at + 1 :]
            return [], ids
        if self.tokenizer is None:
            raise ConfigError(
                f"{opt}.template_ids",
                "without a tokenizer the template must be given as token ids",
                "pass a tokenizer (components.tokenizer) or template_ids",
            )
        text = DEFAULT_TEMPLATE if template is None else str(template)
        if text.count("{}") > 1:
            raise ConfigError(f"{opt}.template", "'{}' (the slot) appears twice")
        before, _, after = text.partition("{}") if "{}" in text else ("", "", text)
        return (
            self._tokenize(before) if before.strip() else [],
            self._tokenize(after) if after.strip() else [],
        )

    def _padded(self, ids: list[int]) -> torch.Tensor:
        """``(1, max_length)`` ids padded with the pad token (SD pads to the full length)."""
        ids = ids + [self.pad_id] * (self.max_length - len(ids))
        return torch.tensor([ids], dtype=torch.long)

    # ------------------------------------------------------------------------- interface
    @property
    def prompt_shape(self) -> tuple[int, ...]:
        return (self.n_tokens, self.hidden)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    @property
    def n_classes(self) -> int:
        return len(self._class_ids)

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    def init_prompt(self, source_class: int | None, generator: torch.Generator) -> torch.Tensor:
        """The token embeddings of a class's name (cycled / cut to ``n_tokens``), or random ones.

        Random: Gaussian directions scaled to norms drawn from the token table's row-norm mean and
        std, so the prompt starts at the scale the text encoder was trained on.
        """
        table = self.text_encoder.get_input_embeddings().weight.detach().float()
        if source_class is not None:
            if not 0 <= source_class < self.n_classes:
                raise ValueError(
                    f"source class {source_class} has no name to start from: "
                    f"{self.n_classes} class names (options.class_names)"
                )
            row = self._class_ids[source_class]
            ids = torch.tensor([row[i % len(row)] for i in range(self.n_tokens)])
            return table[ids.to(table.device)].clone()
        norms = table.norm(dim=1)
        gen_device = generator.device
        direction = torch.randn(self.prompt_shape, generator=generator, device=gen_device)
        scale = torch.randn(self.n_tokens, 1, generator=generator, device=gen_device)
        direction, scale = direction.to(table.device), scale.to(table.device)
        target = (norms.mean() + norms.std() * scale).clamp_min(norms.min())
        return direction / direction.norm(dim=1, keepdim=True) * target

    # --------------------------------------------------------------------------- encoding
    def encode_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """``(1, max_length, hidden)`` text-encoder states with the soft prompt spliced in."""
        table = self.text_encoder.get_input_embeddings()
        soft = prompt.to(device=table.weight.device, dtype=table.weight.dtype).unsqueeze(0)
        start, stop = self._slot, self._slot + self.n_tokens
        called = []

        def splice(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            called.append(True)
            soft_rows = soft.expand(output.shape[0], -1, -1)
            return torch.cat([output[:, :start], soft_rows, output[:, stop:]], dim=1)

        handle = table.register_forward_hook(splice)
        try:
            hidden = self.text_encoder(input_ids=self.prompt_ids)[0]
        finally:
            handle.remove()
        if not called:
            raise RuntimeError(
                f"{type(self.text_encoder).__name__} did not call its input-embedding module: "
                "the soft prompt cannot be inserted"
            )
        return hidden

    def _uncond(self) -> torch.Tensor:
        """The empty-prompt states (the guidance baseline), cached per device and dtype."""
        key = (self.device, self.unet.dtype)
        if self._uncond_cache is None or self._uncond_cache[0] != key:
            with torch.no_grad():
                states = self.text_encoder(input_ids=self.uncond_ids)[0]
            self._uncond_cache = (key, states.to(self.unet.dtype))
        return self._uncond_cache[1]

    def encode_images(self, images: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` scaled VAE latents (posterior mean) of ``images`` (float [0, 1], cycled to n)."""
        x = match_shape(images.to(self.device).float(), self.image_shape) * 2 - 1
        x = x[torch.arange(n, device=x.device) % len(x)]
        mean = self.vae.encode(x.to(self.vae.dtype), return_dict=False)[0].mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((mean - shift) * self.vae.config.scaling_factor).to(self.unet.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (float32) from scaled latents."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        images = self.vae.decode(z, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0.0, 1.0)

    # --------------------------------------------------------------------------- sampling
    def _unet_eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

    def _unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One UNet call; checkpointed when a gradient will flow back through it."""
        needs_grad = context.requires_grad or x.requires_grad
        if self.gradient_checkpointing and torch.is_grad_enabled() and needs_grad:
            return checkpoint(self._unet_eps, x, t, context, use_reentrant=False)
        return self._unet_eps(x, t, context)

    def _generate(
        self,
        prompt: torch.Tensor,
        n: int,
        seed: int,
        init_images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        device, dtype = self.device, self.unet.dtype
        cond = self.encode_prompt(prompt).to(dtype)
        guided = self.guidance_scale != 1.0
        if guided:
            context = torch.cat([self._uncond().expand(n, -1, -1), cond.expand(n, -1, -1)])
        else:
            context = cond.expand(n, -1, -1)

        scheduler = self.scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        side = self.resolution // self.vae_scale_factor
        shape = (n, int(self.unet.config.in_channels), side, side)
        noise = seeded_noise(shape, seed, device).to(dtype)
        if init_images is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            keep = min(int(self.num_inference_steps * self.strength), self.num_inference_steps)
            timesteps = timesteps[(self.num_inference_steps - keep) * scheduler.order :]
            start = self.encode_images(init_images, n)
            latents = scheduler.add_noise(start, noise, timesteps[:1].repeat(n))

        for t in timesteps:
            x = torch.cat([latents, latents]) if guided else latents
            eps = self._unet(scheduler.scale_model_input(x, t), t, context)
            if guided:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + self.guidance_scale * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents, eta=0.0, return_dict=False)[0]
        return self.decode_latents(latents)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "source": self.source,
            "n_tokens": self.n_tokens,
            "template": self.template,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "strength": self.strength,
            "class_names": self.class_names,
        }


# --------------------------------------------------------------------------------- loading
def _dtype(value: Any) -> torch.dtype | None:
    """``"float16"`` / ``"torch.bfloat16"`` / a torch.dtype -> that dtype; None = as saved."""
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"{KEY}.options.torch_dtype",
            f"{value!r} is not a floating-point torch dtype",
            "use float32, float16 or bfloat16",
        )
    return dtype


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (``name`` or ``org/name``)."""
    p = Path(path).expanduser()
    return p.exists() or p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1


def _from_pretrained(path: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Each component from a diffusers-layout directory or hub id."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    fix = (
        "give a local directory in diffusers layout (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/) or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5 "
        "(with local_files_only=true it must already be in the Hugging Face cache)"
    )
    if _looks_local(path):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ConfigError(f"{KEY}.path", f"no model directory at '{root}'", fix)
        missing = [
            s for s in ("unet", "vae", "text_encoder", "scheduler") if not (root / s).is_dir()
        ]
        if missing:
            raise ConfigError(
                f"{KEY}.path",
                f"'{root}' is not a diffusers model directory (no {', '.join(missing)} folder)",
                fix,
            )
        path = str(root)
    kwargs = {"local_files_only": bool(options.get("local_files_only", False))}
    if options.get("revision") is not None:
        kwargs["revision"] = str(options["revision"])
    dtype = _dtype(options.get("torch_dtype"))

    def load(what: str, fn: Any, **extra: Any) -> Any:
        try:
            return fn(path, subfolder=what, **kwargs, **extra)
        except Exception as exc:  # missing files, no network, not in cache, bad format
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ConfigError(
                f"{KEY}.path",
                f"could not load the {what} of '{path}' ({type(exc).__name__}: {detail})",
                fix,
            ) from None

    components: dict[str, Any] = {
        "unet": load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=dtype),
        "vae": load("vae", AutoencoderKL.from_pretrained, torch_dtype=dtype),
        "text_encoder": load("text_encoder", CLIPTextModel.from_pretrained),
        "scheduler": DDIMScheduler.from_config(load("scheduler", DDIMScheduler.load_config)),
        "tokenizer": None,
    }
    if dtype is not None:
        components["text_encoder"] = components["text_encoder"].to(dtype)
    if options.get("template_ids") is None:
        components["tokenizer"] = load("tokenizer", CLIPTokenizer.from_pretrained)
    return components


def load_diffusers(
    path: str | None, options: Mapping[str, Any], device: torch.device
) -> DiffusersGenerator:
    """The ``diffusers`` backend: a frozen SD-family model from ``path`` or ``options.components``.

    ``options``: ``n_tokens`` (4), ``template`` ("a photo of"; ``{}`` = prompt slot) or
    ``template_ids``, ``class_names`` / ``class_token_ids``, ``num_inference_steps`` (6),
    ``guidance_scale`` (4.0), ``strength`` (0.6), ``resolution`` (native),
    ``gradient_checkpointing`` (true), ``local_files_only`` (false), ``torch_dtype``, ``revision``,
    ``components`` (built modules: ``unet``, ``vae``, ``text_encoder``, optional ``tokenizer`` and
    ``scheduler``).
    """
    _require_packages()
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"{KEY}.options.{unknown[0]}",
            "unknown option of the diffusers backend",
            f"use {', '.join(OPTIONS)}",
        )
    built = options.get("components")
    if built is not None:
        if not isinstance(built, Mapping):
            raise ConfigError(f"{KEY}.options.components", "must map component names to modules")
        extra = sorted(set(built) - set(COMPONENTS))
        missing = [c for c in ("unet", "vae", "text_encoder") if built.get(c) is None]
        if extra or missing:
            raise ConfigError(
                f"{KEY}.options.components",
                f"unknown {extra}" if extra else f"missing {missing}",
                f"give {', '.join(COMPONENTS[:3])} and optionally tokenizer, scheduler",
            )
        components = {c: built.get(c) for c in COMPONENTS}
        dtype = _dtype(options.get("torch_dtype"))
        if dtype is not None:
            for c in ("unet", "vae", "text_encoder"):
                components[c] = components[c].to(dtype)
        source = "components"
    else:
        if not path:
            raise ConfigError(
                f"{KEY}.path",
                "is required for the diffusers backend",
                "give a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local "
                "directory in diffusers layout",
            )
        components = _from_pretrained(str(os.fspath(path)), options)
        source = str(path)
    generator = DiffusersGenerator(
        components["unet"],
        components["vae"],
        components["text_encoder"],
        scheduler=components["scheduler"],
        tokenizer=components["tokenizer"],
        n_tokens=int(options.get("n_tokens", 4)),
        template=options.get("template"),
        template_ids=options.get("template_ids"),
        class_names=list(options.get("class_names") or ()),
        class_token_ids=options.get("class_token_ids"),
        num_inference_steps=int(options.get("num_inference_steps", 6)),
        guidance_scale=float(options.get("guidance_scale", 4.0)),
        strength=float(options.get("strength", 0.6)),
        resolution=options.get("resolution"),
        gradient_checkpointing=bool(options.get("gradient_checkpointing", True)),
        source=source,
    )
    return generator.to(device)


register_backend("diffusers", load_diffusers)
