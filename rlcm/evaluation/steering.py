"""`rlcm eval --steer`: the base and tuned models steered by a reward (best-of-N, FK) on the same (prompt, seed) pairs
as their unsteered samples, with the sampling compute each final image cost, and the plot of reward against it.

Each (prompt i, seed s) pair is steered alone, its N particles one batch, from a CPU generator seeded by
`noise_seed(i, s)`: particle 0 starts from the initial noise of the unsteered sample of that pair, so the rows pair up
as the unsteered ones do. Compute per image = UNet evaluations + images decoded and scored by the steering reward
(`rollout.steering.particles.compute_per_image`); an unsteered image costs H UNet evaluations (2H with classifier-free
guidance) and no reward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from rewards_service.client import RewardClient
from rlcm.evaluation.sampling import noise_seed
from rlcm.evaluation.settings import EvalSettings
from rlcm.runs.checkpoint_record import DEFAULTS, SamplingRecord
from rollout.steering_kinds import resampling_steps


def steered_label(model: str, method: str, particles: int) -> str:
    """The row of `model` steered by `method` with N particles: "base + best-of-4", "tuned + fk-4"."""
    return f"{model} + {'best-of-' if method == 'best-of-n' else method + '-'}{particles}"


def unsteered_compute(pipe, sampling: SamplingRecord) -> dict[str, float]:
    """What one stock sample costs: H UNet evaluations (times 2 with guidance doubling), no reward."""
    from rollout.policies import policy_for
    from rollout.steering.particles import compute_per_image

    images_per_step = policy_for(pipe).unet_images_per_step(sampling.guidance_scale)
    return with_total(compute_per_image(1, sampling.num_steps, 0, 1, images_per_step))


def with_total(compute: dict[str, float]) -> dict[str, float]:
    """`compute` with total_per_image = UNet evaluations + images scored by the steering reward."""
    return {**compute, "total_per_image": compute["unet_evals_per_image"] + compute["images_scored_per_image"]}


def score_steered(
    pipe,
    label: str,
    method: str,
    particles: int,
    prompts: list[str],
    clients: dict[str, RewardClient],
    steer_client: RewardClient,
    settings: EvalSettings,
    grid_pairs: set,
    sampling: SamplingRecord = DEFAULTS,
) -> tuple[dict, dict, dict[str, float]]:
    """Steer every (prompt, seed) pair, score the chosen images with every metric.

    Returns ({metric: [n] scores, NaN where unscored}, {pair: image} for the grid pairs, compute per image).
    """
    import torch

    from rollout.steering import steer
    from rollout.steering.scoring import client_score

    score = client_score(steer_client)
    resample_at = resampling_steps(sampling.num_steps, settings.resample_every) if method == "fk" else []
    pairs = [(i, s) for i in range(len(prompts)) for s in range(settings.seeds)]
    chosen, compute = [], {}
    for i, s in tqdm(pairs, desc=f"rlcm eval {label}", unit="image", disable=None):
        result = steer(
            pipe,
            [prompts[i]],
            sampling.num_steps,
            sampling.guidance_scale,
            torch.Generator().manual_seed(noise_seed(i, s)),
            score,
            particles,
            method,
            settings.potential,
            settings.lam,
            resample_at,
            reward_name=steer_client.reward,
            height=sampling.height,
            width=sampling.width,
            **sampling.sampler_options(),
        )
        chosen.append(result.images[0].permute(1, 2, 0).cpu().numpy())
        compute = result.compute
    images = np.stack(chosen)
    scores = {}
    for name, client in clients.items():
        batches = [
            client.score(
                images[start : start + settings.batch_size],
                [prompts[i] for i, _ in pairs[start:][: settings.batch_size]],
            )
            for start in range(0, len(pairs), settings.batch_size)
        ]
        scores[name] = np.array(
            [r if v else np.nan for res in batches for r, v in zip(res.rewards, res.valid)], dtype=np.float64
        )
    kept = {pair: image for pair, image in zip(pairs, images) if pair in grid_pairs}
    return scores, kept, with_total(compute)


def save_compute_plot(path: Path, report: dict, metric: str) -> None:
    """Mean ± 95% CI of `metric` against the sampling compute per image, one series per model and steering method
    (the particle counts along it), unsteered models as single points; each run's training compute in the legend."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    series: dict[str, list[tuple[float, dict, int]]] = {}
    for label, row in report["rows"].items():
        name = row["model"] if row["method"] == "none" else f"{row['model']} + {row['method']}"
        stats = report["metrics"][metric].get(label)
        if stats and stats["n"]:
            series.setdefault(name, []).append((report["compute"][label]["total_per_image"], stats, row["particles"]))
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for name, points in series.items():
        points.sort(key=lambda point: point[0])
        x = [p[0] for p in points]
        y = [p[1]["mean"] for p in points]
        half = [p[1]["half_width"] if np.isfinite(p[1]["half_width"] or np.nan) else 0.0 for p in points]
        model = name.split(" + ")[0]
        trained = report.get("training_compute", {}).get(model)
        legend = name + (f" (training: {trained['samples']} samples, {trained['wall_s']:.0f} s)" if trained else "")
        axes.errorbar(x, y, yerr=half, marker="o", capsize=3, label=legend)
        for xi, yi, (_, _, n) in zip(x, y, points):
            if n > 1:
                axes.annotate(f"N={n}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xscale("log")
    ticks = sorted({point[0] for points in series.values() for point in points})
    axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks], fontsize=7)
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("sampling compute per image (UNet evaluations + images scored by the steering reward)", fontsize=8)
    axes.set_ylabel(f"{metric} (mean ± 95% CI)")
    axes.set_title(f"{metric} against sampling compute, {report['num_prompts']} prompts × {report['seeds']} seeds")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
