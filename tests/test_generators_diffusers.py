"""The ``diffusers`` generator backend on a tiny randomly initialised SD-style model (no download).

Covers what Dream2Learn relies on: the classifier's gradient reaches the soft prompt (and only
the prompt), seeds make images reproducible, image-to-image, output shapes, the loader's errors.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cl_framework.errors import ConfigError
from cl_framework.generators import load_generator
from cl_framework.generators.diffusers_backend import (
    DiffusersGenerator,
    load_diffusers,
)

PATH_KEY = "strategy.d2l.generator.path"


def tiny_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE over single letters plus a few whole words (ids < 100)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 16
    return tok


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """UNet (latent 8x8), VAE (x2, 4 latent channels), 2-layer CLIP text encoder, DDIM."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=1000,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tiny_tokenizer(),
        "scheduler": scheduler,
    }


def make(components: dict[str, Any] | None = None, **options: Any) -> DiffusersGenerator:
    options = {"num_inference_steps": 4, "guidance_scale": 3.0, **options}
    gen = load_diffusers(None, {"components": components or tiny_components(), **options}, "cpu")
    assert isinstance(gen, DiffusersGenerator)
    return gen


@pytest.fixture(scope="module")
def gen() -> DiffusersGenerator:
    return make(class_names=["cat", "dog", "red_fox"])


def classifier_loss(images: torch.Tensor) -> torch.Tensor:
    """A fixed random linear 'classifier' on the flattened images."""
    weight = torch.randn(images[0].numel(), 5, generator=torch.Generator().manual_seed(7))
    return (images.flatten(1) @ weight).logsumexp(1).mean()


def test_shapes_and_prompt_init(gen: DiffusersGenerator) -> None:
    assert gen.prompt_shape == (4, 32) and gen.image_shape == (3, 16, 16)
    assert gen.n_classes == 3 and gen.describe()["backend"] == "diffusers"
    table = gen.text_encoder.get_input_embeddings().weight
    cat = gen.init_prompt(0, torch.Generator().manual_seed(0))  # "cat" is one token, cycled
    assert torch.equal(cat, table[[55] * 4])
    fox_ids = gen.tokenizer("red fox", add_special_tokens=False).input_ids  # r e d</w> f o x</w>
    assert len(fox_ids) == 6  # "red_fox" -> "red fox", cut to 4 tokens
    assert torch.equal(gen.init_prompt(2, torch.Generator()), table[fox_ids[:4]])
    a = gen.init_prompt(None, torch.Generator().manual_seed(1))
    b = gen.init_prompt(None, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == gen.prompt_shape
    norms = table.norm(dim=1)
    assert (a.norm(dim=1) - norms.mean()).abs().max() < 5 * norms.std() + 1e-6
    with pytest.raises(ValueError, match="source class 3"):
        gen.init_prompt(3, torch.Generator())
    with pytest.raises(ValueError, match="expects"):
        gen.generate(torch.zeros(3, 32), 1, seed=0)


def test_soft_prompt_is_spliced_into_the_text_encoder(gen: DiffusersGenerator) -> None:
    # the prompt = the token embeddings of "cat cat cat cat" -> same states as encoding the ids
    prompt = gen.init_prompt(0, torch.Generator())
    tail = gen.tokenizer("a photo of", add_special_tokens=False).input_ids
    ids = [0, 55, 55, 55, 55, *tail, 1]
    ids += [1] * (16 - len(ids))
    with torch.no_grad():
        expected = gen.text_encoder(input_ids=torch.tensor([ids]))[0]
        got = gen.encode_prompt(prompt)
    assert torch.allclose(got, expected, atol=1e-6)
    # "{}" moves the slot after the template: ids = BOS, a photo of, prompt, EOS
    late = make(gen_components(gen), template="a photo of {}")
    ids = [0, *tail, 55, 55, 55, 55, 1]
    ids += [1] * (16 - len(ids))
    with torch.no_grad():
        expected = gen.text_encoder(input_ids=torch.tensor([ids]))[0]
        assert torch.allclose(late.encode_prompt(prompt), expected, atol=1e-6)


def gen_components(gen: DiffusersGenerator) -> dict[str, Any]:
    return {
        "unet": gen.unet,
        "vae": gen.vae,
        "text_encoder": gen.text_encoder,
        "tokenizer": gen.tokenizer,
        "scheduler": gen.scheduler,
    }


def test_gradient_reaches_the_prompt_and_checkpointing_does_not_change_it(
    gen: DiffusersGenerator,
) -> None:
    grads = []
    for checkpointing in (True, False):
        g = make(gen_components(gen), gradient_checkpointing=checkpointing)
        prompt = gen.init_prompt(1, torch.Generator()).requires_grad_(True)
        classifier_loss(g.generate(prompt, n=2, seed=3)).backward()
        assert prompt.grad is not None and torch.isfinite(prompt.grad).all()
        assert prompt.grad.abs().sum() > 0
        grads.append(prompt.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_weights_never_change(gen: DiffusersGenerator) -> None:
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    assert not any(p.requires_grad for p in gen.parameters())
    prompt = gen.init_prompt(None, torch.Generator().manual_seed(0)).requires_grad_(True)
    start = prompt.detach().clone()
    optim = torch.optim.Adam([prompt], lr=0.05)
    for step in range(3):
        optim.zero_grad()
        classifier_loss(gen.generate(prompt, n=2, seed=step)).backward()
        optim.step()
    assert not torch.equal(prompt.detach(), start)
    after = gen.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in gen.parameters())
    assert not gen.training and not gen.unet.training and not gen.text_encoder.training


def test_same_seed_same_images(gen: DiffusersGenerator) -> None:
    prompt = gen.init_prompt(0, torch.Generator())
    with torch.no_grad():
        a = gen.generate(prompt, n=2, seed=11)
        b = gen.generate(prompt, n=2, seed=11)
        c = gen.generate(prompt, n=2, seed=12)
        d = gen.generate(gen.init_prompt(1, torch.Generator()), n=2, seed=11)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)
    assert not torch.allclose(a[0], a[1])  # each image has its own noise


def test_image_to_image_runs_fewer_steps_and_is_differentiable(gen: DiffusersGenerator) -> None:
    calls = []
    handle = gen.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        prompt = gen.init_prompt(2, torch.Generator()).requires_grad_(True)
        init = torch.rand(1, 1, 20, 12, generator=torch.Generator().manual_seed(0))  # any size
        images = gen.generate(prompt, n=2, seed=0, init_images=init)
        forward_calls = len(calls)
        classifier_loss(images).backward()
    finally:
        handle.remove()
    assert images.shape == (2, 3, 16, 16)
    assert forward_calls == int(4 * 0.6)  # strength 0.6 of 4 steps, guidance in one batch
    assert prompt.grad is not None and torch.isfinite(prompt.grad).all()
    assert prompt.grad.abs().sum() > 0
    with torch.no_grad():
        plain = gen.generate(prompt, n=2, seed=0)
    assert not torch.allclose(images.detach(), plain)


def test_out_shape_and_range(gen: DiffusersGenerator) -> None:
    with torch.no_grad():
        images = gen.generate(gen.init_prompt(0, torch.Generator()), 3, 0, out_shape=(1, 28, 28))
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1


def test_without_tokenizer_and_without_guidance(gen: DiffusersGenerator) -> None:
    parts = gen_components(gen) | {"tokenizer": None}
    g = make(parts, template_ids=[-1, 28, 17], class_token_ids=[[55]], guidance_scale=1.0)
    assert g.prompt_ids[0, :8].tolist() == [0, 1, 1, 1, 1, 28, 17, 1]
    calls = []
    handle = g.unet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        prompt = g.init_prompt(0, torch.Generator()).requires_grad_(True)
        images = g.generate(prompt, n=2, seed=0)
        forward_calls = list(calls)
        classifier_loss(images).backward()
    finally:
        handle.remove()
    assert forward_calls == [2] * 4  # batch n: no unconditional half
    assert len(calls) == 8  # checkpointing: each call runs again in the backward pass
    assert prompt.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="template_ids"):
        make(gen_components(gen) | {"tokenizer": None})


def test_registry_and_from_pretrained_directory(gen: DiffusersGenerator, tmp_path: Path) -> None:
    for name, part in gen_components(gen).items():
        part.save_pretrained(tmp_path / name)
    config = {
        "backend": "diffusers",
        "path": str(tmp_path),
        "options": {"local_files_only": True, "num_inference_steps": 4, "guidance_scale": 3.0},
    }
    loaded = load_generator(config)
    assert isinstance(loaded, DiffusersGenerator) and loaded.source == str(tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    prompt = gen.init_prompt(0, torch.Generator())
    with torch.no_grad():
        assert torch.allclose(loaded.generate(prompt, 1, 5), gen.generate(prompt, 1, 5), atol=1e-5)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_loader_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def key_of(path: Any, options: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as info:
            load_generator({"backend": "diffusers", "path": path, "options": options})
        return info.value.key

    assert key_of(str(tmp_path / "no-such-model"), {}) == PATH_KEY
    assert key_of(str(tmp_path), {}) == PATH_KEY  # exists, but no unet/ vae/ ... folders
    assert key_of(None, {}) == PATH_KEY
    hub = "cl-framework-tests/no-such-model"  # not cached; local_files_only: nothing downloaded
    assert key_of(hub, {"local_files_only": True}) == PATH_KEY
    assert (
        key_of(str(tmp_path), {"sample_steps": 4}) == "strategy.d2l.generator.options.sample_steps"
    )
    parts = tiny_components()
    assert key_of(None, {"components": parts, "strength": 0.1, "num_inference_steps": 4}) == (
        "strategy.d2l.generator.options.strength"
    )
    assert key_of(None, {"components": parts, "n_tokens": 12}) == (
        "strategy.d2l.generator.options.n_tokens"
    )
    assert key_of(None, {"components": {"unet": parts["unet"]}}) == (
        "strategy.d2l.generator.options.components"
    )
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[diffusers\]'") as info:
        load_diffusers("any/model", {}, torch.device("cpu"))
    assert info.value.key == "strategy.d2l.generator.backend"
