"""Real architectures with random weights, built from configs shipped in the package (no hub files).

`random:<hub id>` as a model name (e.g. `random:SimianLuo/LCM_Dreamshaper_v7`) gives the pipeline of that
model at its full size with random weights: the SD1.5 UNet with the LCM guidance embedding
(time_cond_proj_dim=256), the SD1.5 `AutoencoderKL` (scaling 0.18215), the CLIP ViT-L/14 text encoder
(77 tokens) with the real CLIP BPE tokenizer (OpenAI CLIP's vocabulary, shipped in rewards_service/architectures)
and the model's `LCMScheduler`.
`random:runwayml/stable-diffusion-v1-5` (DDPO's model) is SD1.5: the same UNet without the guidance embedding, the
same VAE and text encoder, and its scheduler config (PNDM in the hub repo) loaded as a `DDIMScheduler`.
It is what `rlcm train --dry-run` runs: every code path of a real run, nothing learned.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

RANDOM_PREFIX = "random:"
ARCHITECTURES = {
    "SimianLuo/LCM_Dreamshaper_v7": "lcm_dreamshaper_v7",
    "runwayml/stable-diffusion-v1-5": "stable_diffusion_v1_5",
}


def is_random(model: str) -> bool:
    return model.startswith(RANDOM_PREFIX)


def architecture_dir(model: str) -> Path:
    """The folder of shipped configs for `random:<hub id>`; a clear error for an architecture we do not ship."""
    hub_id = model.removeprefix(RANDOM_PREFIX)
    if hub_id not in ARCHITECTURES:
        raise ValueError(
            f"model.name: no shipped architecture for {hub_id!r}; random weights are available for "
            f"{sorted(ARCHITECTURES)}"
        )
    return Path(str(resources.files(f"rollout.architectures.{ARCHITECTURES[hub_id]}")))


def _config(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def clip_bpe_tokenizer(model_max_length: int = 77):
    """The CLIP BPE tokenizer (49408 tokens) of the text encoder: the same builder and shipped vocabulary as the CLIP
    reward backbones use (`rewards_service.architectures`, data only: it imports nothing of rollout)."""
    from rewards_service.architectures import clip_tokenizer

    return clip_tokenizer(model_max_length)


def meta_unet(model: str):
    """The UNet of `random:<hub id>` on the meta device (no memory): for module names and FLOP counts."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(_config(architecture_dir(model), "unet"))


def build_random_pipeline(model: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The pipeline of `random:<hub id>` with random weights, built directly in `dtype`: a
    `LatentConsistencyModelPipeline` with an `LCMScheduler`, or a `StableDiffusionPipeline` with a `DDIMScheduler`
    (for a DDIM model)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from rollout.samplers import DDIM, sampler_of

    folder = architecture_dir(model)
    tokenizer = clip_bpe_tokenizer(_config(folder, "tokenizer")["model_max_length"])
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            unet = UNet2DConditionModel.from_config(_config(folder, "unet"))
            vae = AutoencoderKL.from_config(_config(folder, "vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig(**_config(folder, "text_encoder")))
        finally:
            torch.set_default_dtype(previous)
    parts = dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if sampler_of(model) == DDIM:
        return StableDiffusionPipeline(
            scheduler=DDIMScheduler.from_config(_config(folder, "scheduler")), image_encoder=None, **parts
        )
    return LatentConsistencyModelPipeline(scheduler=LCMScheduler.from_config(_config(folder, "scheduler")), **parts)
