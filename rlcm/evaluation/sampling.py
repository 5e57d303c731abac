"""Sampling every (prompt, seed) pair with its own noise from the stock pipeline; scoring batches as more sample."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from rewards_service.client import RewardClient
from rlcm.evaluation.settings import EvalSettings
from rlcm.runs.checkpoint_record import DEFAULTS, SamplingRecord


def noise_seed(prompt_index: int, seed: int) -> int:
    """The generator seed of sample (prompt_index, seed): the same for the base and the tuned model."""
    return int(np.random.default_rng([prompt_index, seed, 11]).integers(0, 2**62))


def sample_images(
    pipe, prompts: list[str], pairs: list[tuple[int, int]], settings: EvalSettings, sampling: SamplingRecord = DEFAULTS
) -> np.ndarray:
    """uint8 [len(pairs), H, W, 3] from the stock pipeline call, one CPU generator per (prompt index, seed)."""
    import torch

    generators = [torch.Generator().manual_seed(noise_seed(i, s)) for i, s in pairs]
    output = pipe(
        [prompts[i] for i, _ in pairs],
        num_inference_steps=settings.steps or sampling.num_steps,
        guidance_scale=sampling.guidance_scale if settings.guidance_scale is None else settings.guidance_scale,
        **sampling.sampler_options(),
        height=sampling.height,
        width=sampling.width,
        generator=generators,
        output_type="np",
    )
    return (np.asarray(output.images) * 255).round().clip(0, 255).astype(np.uint8)


def score_model(
    pipe,
    label: str,
    prompts: list[str],
    clients: dict[str, RewardClient],
    settings: EvalSettings,
    grid_pairs: set,
    sampling: SamplingRecord = DEFAULTS,
) -> tuple[dict, dict]:
    """Sample every (prompt, seed) pair in batches, score each batch while the next one samples.

    Returns ({metric: [n] scores, NaN where unscored}, {pair: image} for the grid pairs).
    """
    pairs = [(i, s) for i in range(len(prompts)) for s in range(settings.seeds)]
    futures, kept = {name: [] for name in clients}, {}
    # a bar only on a terminal (disable=None): logs and pipes get the final table, not bar redraws
    for start in tqdm(range(0, len(pairs), settings.batch_size), desc=f"rlcm eval {label}", unit="batch", disable=None):
        batch = pairs[start : start + settings.batch_size]
        images = sample_images(pipe, prompts, batch, settings, sampling)
        for name, client in clients.items():
            futures[name].append(client.submit(images, [prompts[i] for i, _ in batch]))
        kept.update({pair: image for pair, image in zip(batch, images) if pair in grid_pairs})
    scores = {}
    for name, client in clients.items():
        results = [client.result(f) for f in futures[name]]
        scores[name] = np.array(
            [r if v else np.nan for res in results for r, v in zip(res.rewards, res.valid)], dtype=np.float64
        )
        errors = [e for res in results for e in res.details.get("error", []) if e]
        if errors:
            tqdm.write(
                f"rlcm eval: {label}: {int(np.isnan(scores[name]).sum())} of {len(pairs)} samples not scored by "
                f"{name}: {errors[0]}"
            )
    return scores, kept
