"""Loading pipelines: a hub id, a local directory, or a toy built from configs (`"tiny"` LCM, `"tiny-ddim"` SD).

The toy is a real `LatentConsistencyModelPipeline` (stock diffusers class) whose parts are small:
a random 2-level `UNet2DConditionModel` with the LCM guidance embedding (sample prediction), a
random 2-layer CLIP text encoder with a character-level CLIP tokenizer, and a pixel-space decoder
(latents -> per-image channel centring -> 1x1 mix to RGB -> tanh -> nearest upsample) in place of the VAE.
It has learned nothing; it exists so that every code path used with real models runs on a laptop CPU,
and so that RL has something to climb that the policy gradient can see:

- its UNet's sample predictions are scaled to the data's scale (`TOY_OUTPUT_SCALE`: std ≈ 1, as
  SD latents), so the policy's means, not only its noise, shape each action;
- its scheduler's boundary condition keeps most of the last action in the output
  (`TOY_LCM_TIMESTEP_SCALING`: c_skip(τ) = σ_data²/((s·τ)² + σ_data²) is 0.79 at the last of 4 steps,
  where the stock s = 10 gives 0): the image is decided by the Gaussian actions whose log-probabilities the
  policy gradient credits, not by the last, deterministic UNet call that no log π sees. With the stock
  scaling a random-reward control moved the images further than the reward did (docs/results/toy_drift.md).

`"tiny-ddim"` is the same toy as a `StableDiffusionPipeline` for DDPO: a UNet without the guidance embedding
(v prediction, its output × 4 and the decoder centred and ÷ 4 as the LCM toy's, classifier-free guidance), the same
text encoder, and a `DDIMScheduler` with SD1.5's ᾱ_t × 0.9 (`TOY_DDIM_FINAL_ALPHA_CUMPROD`) and trailing timesteps
(999, 749, 499, 249 at 4 steps). With SD's own schedule, 4 DDIM steps end in a step into t = 1 whose σ is 0.04 while
its mean moves the image: that near-deterministic step held 78 % of DDPO's gradient, and x̂0 clipped to ±1 (which an
ε-predicting random UNet needs) saturated the latents, so the negated reward could not roughen them
(docs/results/toy_drift.md). v prediction keeps the chain bounded without a clip.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from rollout.architectures import build_random_pipeline, is_random
from rollout.precision import dtypes_for
from rollout.samplers import DDIM, EXAMPLES, LCM, sampler_of

TINY, TINY_DDIM = "tiny", "tiny-ddim"
TOY_OUTPUT_SCALE = 4.0  # the random UNet's conv_out × 4 (LCM: sample predictions of std ≈ 1, was ≈ 0.3; DDIM: v × 4)
TOY_LCM_TIMESTEP_SCALING = 1e-3  # LCMScheduler's s in c_skip(τ) = σ_data²/((s·τ)² + σ_data²); stock: 10
TOY_DDIM_FINAL_ALPHA_CUMPROD = 0.9  # the toy DDIM's ᾱ × this: its step into ᾱ_0 keeps σ ≈ 0.29 (SD's: 0.03)
DEFAULT_REAL_MODEL = "SimianLuo/LCM_Dreamshaper_v7"


class ToyPixelDecoder(ModelMixin, ConfigMixin):
    """Stands in for `AutoencoderKL.decode`: optional per-image channel centring, a fixed 1x1 channel mix divided
    by `input_scale`, tanh, nearest upsampling.

    Centring keeps a shift of the latents' mean from flattening the image through tanh (a reward-free direction
    any random walk of the weights finds); `input_scale` undoes a UNet output scale so the base image keeps its
    contrast."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (8, 8, 8),
        scaling_factor: float = 1.0,
        center: bool = False,
        input_scale: float = 1.0,
    ):
        super().__init__()
        self.to_rgb = torch.nn.Conv2d(latent_channels, 3, kernel_size=1)
        self.requires_grad_(False)

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def decode(self, z: torch.Tensor, return_dict: bool = False, generator: torch.Generator | None = None):
        """`generator` is accepted (unused) as `AutoencoderKL.decode` takes it: StableDiffusionPipeline passes it."""
        if self.config.center:
            z = z - z.mean(dim=(2, 3), keepdim=True)
        mixed = self.to_rgb(z) / self.config.input_scale
        image = F.interpolate(torch.tanh(mixed), scale_factor=self.upscale, mode="nearest")
        return (image,)


def char_level_clip_tokenizer(model_max_length: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: one token per byte-level character."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={tok: i for i, tok in enumerate(tokens)}, merges=[], model_max_length=model_max_length)


def random_clip_text_encoder(
    tokenizer: CLIPTokenizer, hidden_size: int, intermediate_size: int, num_heads: int, num_layers: int = 2
) -> CLIPTextModel:
    """A randomly initialised CLIP text encoder sized for `tokenizer` (seed torch first for determinism)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    )


def _tiny_parts(seed: int, sample_size: int, time_cond_proj_dim: int | None, output_scale: float = 1.0) -> dict:
    """The toys' shared parts (tokenizer, text encoder, UNet, decoder), deterministic for `seed`; `time_cond_proj_dim`:
    the LCM guidance embedding's width, None for Stable Diffusion; `output_scale`: the UNet's `conv_out` × this and
    the decoder centred and ÷ this (1: neither)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = char_level_clip_tokenizer(model_max_length=32)
        text_encoder = random_clip_text_encoder(tokenizer, hidden_size=32, intermediate_size=64, num_heads=4)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        vae = ToyPixelDecoder(center=output_scale != 1.0, input_scale=output_scale)
        with torch.no_grad():
            unet.conv_out.weight.mul_(output_scale)
            unet.conv_out.bias.mul_(output_scale)
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(seed: int = 0, sample_size: int = 16) -> LatentConsistencyModelPipeline:
    """The toy LCM: deterministic for `seed`, 4x`sample_size` pixel images, no downloads."""
    scheduler = LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="sample",
        original_inference_steps=50,
        timestep_scaling=TOY_LCM_TIMESTEP_SCALING,
    )
    parts = _tiny_parts(seed, sample_size, time_cond_proj_dim=32, output_scale=TOY_OUTPUT_SCALE)
    return LatentConsistencyModelPipeline(scheduler=scheduler, **parts)


def toy_ddim_betas() -> list[float]:
    """SD1.5's scaled-linear β_t with β_0 raised so that ᾱ_0 = `TOY_DDIM_FINAL_ALPHA_CUMPROD`·(1 − β_0^SD): every
    ᾱ_t is SD's × that factor, so the chain ends with some noise left and no DDIM step is near-deterministic."""
    betas = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").betas.double()
    betas[0] = 1 - TOY_DDIM_FINAL_ALPHA_CUMPROD * (1 - betas[0])
    return betas.tolist()


def build_tiny_ddim_pipeline(seed: int = 0, sample_size: int = 16) -> StableDiffusionPipeline:
    """The toy Stable Diffusion pipeline for DDPO: epsilon prediction, no guidance embedding, a DDIMScheduler."""
    scheduler = DDIMScheduler(
        trained_betas=toy_ddim_betas(),
        prediction_type="v_prediction",
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
        clip_sample=False,
    )
    parts = _tiny_parts(seed, sample_size, time_cond_proj_dim=None, output_scale=TOY_OUTPUT_SCALE)
    return StableDiffusionPipeline(scheduler=scheduler, image_encoder=None, **parts)


TOY_BUILDERS = {TINY: build_tiny_pipeline, TINY_DDIM: build_tiny_ddim_pipeline}


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~")) or os.sep in model.rstrip(os.sep).split(os.sep, 1)[-1] or Path(model).exists()
    )


def load_pipeline(
    model: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> LatentConsistencyModelPipeline | StableDiffusionPipeline:
    """A pipeline with frozen weights, no safety checker, progress bars off: an LCM with an `LCMScheduler`, or a
    Stable Diffusion model (DDPO's) with a `DDIMScheduler`.

    `model` is a toy (`"tiny"`, `"tiny-ddim"`: built from configs), a local directory in diffusers layout, a
    Hugging Face hub id such as `SimianLuo/LCM_Dreamshaper_v7` or `runwayml/stable-diffusion-v1-5`, or
    `random:<hub id>` (that model's real architecture with random weights, see `rollout.architectures`).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtypes_for(dtype, device).base
    if model in TOY_BUILDERS:
        pipe = TOY_BUILDERS[model](seed=seed)
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
    elif is_random(model):
        pipe = build_random_pipeline(model, seed=seed, dtype=dtype)
    else:
        pipe = _load_pretrained(model, dtype)
    pipe.to(device)
    for component in (pipe.unet, pipe.vae, pipe.text_encoder):
        component.requires_grad_(False)
        component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_pretrained(model: str, dtype: torch.dtype):
    """An LCM, or a Stable Diffusion pipeline with its scheduler replaced by a DDIMScheduler of the same config."""
    local = Path(model).expanduser()
    if _looks_like_path(model) and not local.is_dir():
        raise FileNotFoundError(
            f"model directory {model!r} does not exist; pass an existing diffusers folder, a hub id "
            f"such as {DEFAULT_REAL_MODEL!r}, or 'tiny' for the toy model"
        )
    sampler = sampler_of(model) or LCM
    pipeline_class, scheduler_class, kind = (
        (StableDiffusionPipeline, DDIMScheduler, "Stable Diffusion model")
        if sampler == DDIM
        else (LatentConsistencyModelPipeline, LCMScheduler, "LCM")
    )
    try:
        pipe = pipeline_class.from_pretrained(
            str(local) if local.is_dir() else model,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"could not load {kind} {model!r}: {error}. Check the hub id or folder; offline machines need the "
            f"weights in the local Hugging Face cache or a local folder ({EXAMPLES[sampler]} are the kind this loads)"
        ) from error
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    return pipe
