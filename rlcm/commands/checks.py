"""Checks made before Ray starts, so a mistake costs seconds and one clear line, not actor tracebacks.

- the model: a toy (`tiny`, `tiny-ddim`), an existing diffusers folder, or a hub id that is in the local cache (or
  downloadable);
- the reward: a registered name for the local backend; a differentiable one for first-order algorithms;
- the LoRA target modules: each must match a module of the UNet (built on the meta device, no weights).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rlcm.config.schema import ConfigError, TrainConfig
from rollout.samplers import is_toy


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def model_config_dir(model: str) -> Path | None:
    """The local folder holding `model`'s `model_index.json` (a diffusers folder or the hub cache), or None."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ConfigError(
                f"model.name: {model} is a folder without model_index.json; pass a diffusers pipeline folder"
            )
        return local
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(
            f"model.name: {model!r} is neither a toy ('tiny', 'tiny-ddim'), an existing folder, nor a hub id like "
            "'SimianLuo/LCM_Dreamshaper_v7'"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if _hub_offline():
        raise ConfigError(
            f"model.name: {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it "
            f"first (`hf download {model}`) or pass a local folder with --set model.name=/path/to/model"
        )
    return fetch_model_index(model)


def fetch_model_index(model: str, timeout_s: float = 5.0) -> Path:
    """Not cached and the hub may be used: one quick request for `model_index.json` (no retries), then the download
    (a few hundred bytes), so a wrong id or an unreachable hub fails here at once, not in the actors after Ray
    started."""
    import httpx
    from huggingface_hub import constants, get_token, hf_hub_download

    url = f"{constants.ENDPOINT}/{model}/resolve/main/model_index.json"
    token = get_token()
    try:
        response = httpx.head(
            url, follow_redirects=True, timeout=timeout_s, headers={"authorization": f"Bearer {token}"} if token else {}
        )
        problem = None if response.status_code == 200 else f"HTTP {response.status_code} for {url}"
    except httpx.HTTPError as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        return Path(hf_hub_download(model, "model_index.json")).parent
    raise ConfigError(
        f"model.name: {model!r} is not in the local Hugging Face cache and the hub did not give it ({problem}); "
        f"check the id, or download it where the hub is reachable (`hf download {model}`), or pass a local folder "
        "with --set model.name=/path/to/model"
    )


def unet_module_names(model: str, seed: int = 0) -> list[str] | None:
    """Names of the UNet's modules (no weights loaded), or None if the config is not available locally."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    if is_toy(model):
        from rollout.models import TOY_BUILDERS

        return [name for name, _ in TOY_BUILDERS[model](seed=seed).unet.named_modules()]
    if model.startswith("random:"):
        from rollout.architectures import meta_unet

        try:
            return [name for name, _ in meta_unet(model).named_modules()]
        except ValueError as error:
            raise ConfigError(str(error)) from None
    folder = model_config_dir(model)
    if folder is None or not (folder / "unet" / "config.json").is_file():
        return None
    with init_empty_weights(), torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
    return [name for name, _ in unet.named_modules()]


def check_lora_targets(targets: list[str], module_names: list[str]) -> None:
    """peft matches a target to a module whose name is the target or ends with '.' + target."""
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names if n})
        raise ConfigError(
            f"model.lora.target_modules: {missing} match no UNet module; names look like to_q, to_k, to_v, to_out.0, "
            f"conv1, conv2, proj_in, ff.net.2 (last parts here: {', '.join(leaves[:25])}...)"
        )


def check_reward(config: TrainConfig) -> None:
    """`reward.name` is registered (and differentiable when the algorithm backpropagates through it); so is the
    reward the rollout actors' samples are scored with (`reward.monitor` when the learners sample their own)."""
    from rewards_service.registry import REWARD_NAMES, differentiable_reward_names

    reward, algorithm = config.reward, config.algo
    if algorithm.differentiable_reward():
        names = differentiable_reward_names()
        if reward.name not in names:
            raise ConfigError(
                f"reward.name: {reward.name!r} is not differentiable, which {algorithm.name} needs; choose one of "
                f"{names}"
            )
    monitored = algorithm.source.learners_sample and reward.monitor
    served, key = (reward.monitor, "reward.monitor") if monitored else (reward.name, "reward.name")
    if reward.backend == "local" and ":" not in served and served not in REWARD_NAMES:
        raise ConfigError(
            f"{key}: unknown reward {served!r}; choose one of {sorted(REWARD_NAMES)} or a 'package.module:Class' path"
        )


def check_local_resources(config: TrainConfig) -> None:
    """A local run (a fresh Ray on this machine) must fit this machine: a GPU preset on a CPU-only machine fails
    here."""
    import torch

    from cluster.run_actors import resource_requests

    have = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    requests = resource_requests(config)
    asked = {k: sum(r.asks(k) for r in requests) for k in have}
    short = [k for k in ("GPU", "CPU") if asked[k] > have[k] + 1e-9]
    if short:
        first = short[0]  # GPUs when they are short: then CPUs matter less
        askers = sorted(
            ((r.asks(first), first, " x ".join(r.keys_for(first))) for r in requests if r.asks(first) > 0), reverse=True
        )
        raise ConfigError(
            "this run does not fit on this machine "
            f"({'; '.join(f'{asked[k]:g} {k}s asked, this machine has {have[k]:g}' for k in short)}): run it on a "
            "cluster (--address or RAY_ADDRESS), choose a CPU preset (tiny-cpu, rocm-tiny-cpu), or lower with --set "
            + ", ".join(f"{keys} ({n:g} {k}s)" for n, k, keys in askers)
        )


def validate_before_ray(config: TrainConfig, joining_cluster: bool) -> None:
    """All cheap checks; resources and model files are only checked on this machine when the run is local."""
    check_reward(config)
    ray = sys.modules.get("ray")
    if not joining_cluster and not (
        ray is not None and ray.is_initialized()
    ):  # a Ray this process runs on is checked by preflight
        check_local_resources(config)
    if is_toy(config.model.name) or not joining_cluster:
        names = unet_module_names(config.model.name, config.model.seed)
        if names is not None:
            check_lora_targets(config.model.lora.target_modules, names)
