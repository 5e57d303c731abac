"""Which sampler (policy) a model is run with, known without torch so config checks stay fast.

- `lcm`: a `LatentConsistencyModelPipeline` with an `LCMScheduler` (RLCM, GRPO, ROCM, DRaFT, AlignProp);
- `ddim`: a `StableDiffusionPipeline` with a `DDIMScheduler` and classifier-free guidance (DDPO).
"""

from __future__ import annotations

import json
from pathlib import Path

LCM, DDIM = "lcm", "ddim"
TOY_MODELS = {"tiny": LCM, "tiny-ddim": DDIM}  # built from configs by rollout.models
KNOWN_MODELS = {
    "SimianLuo/LCM_Dreamshaper_v7": LCM,
    "runwayml/stable-diffusion-v1-5": DDIM,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": DDIM,
    "CompVis/stable-diffusion-v1-4": DDIM,
}
PIPELINE_CLASSES = {"LatentConsistencyModelPipeline": LCM, "StableDiffusionPipeline": DDIM}
EXAMPLES = {LCM: "tiny or SimianLuo/LCM_Dreamshaper_v7", DDIM: "tiny-ddim or runwayml/stable-diffusion-v1-5"}


def is_toy(model: str) -> bool:
    return model in TOY_MODELS


def sampler_of(model: str) -> str | None:
    """`lcm` or `ddim` for a toy, a known hub id (also as `random:<hub id>`), a local diffusers folder or a cached
    hub model (by its `model_index.json` pipeline class); None when it cannot be told without loading."""
    name = model.removeprefix("random:")
    if name in TOY_MODELS or name in KNOWN_MODELS:
        return TOY_MODELS.get(name) or KNOWN_MODELS[name]
    index = Path(model).expanduser() / "model_index.json"
    if not index.is_file() and model.count("/") == 1 and not model.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json")
        index = Path(cached) if isinstance(cached, str) else index
    if index.is_file():
        return PIPELINE_CLASSES.get(json.loads(index.read_text()).get("_class_name"))
    return None
