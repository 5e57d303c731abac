"""Which DDIM step's log π dominates DDPO's policy gradient on the toy, by number of inference steps H.

The DDPO toy (`ddpo-tiny-cpu`'s model, guidance and image size) samples a batch of chains; for each step k the
script takes the gradient, over the UNet's weights, of mean_i A_i·log π(x_{k+1} | x_k) with advantages A ~ N(0, 1)
(the direction one PPO step would take at ratio 1, before clipping), averaged over a few draws of A, and prints its
norm beside σ_k, the step's action noise. A step whose σ_k is small but whose mean still moves the image dominates
the update while its noise barely changes the reward, so its credit is mostly noise. Writes
docs/results/ddpo_step_gradients.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ddpo_step_gradients.py            # H = 4, 8, 16
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from rlcm.config.prompts import load_prompts
from rlcm.config.schema import load_config
from rollout.models import load_pipeline
from rollout.policies.chain_math import gaussian_log_prob
from rollout.policies.ddim import DDIMTransitions, sample_ddim_trajectory


def step_gradient_norms(pipe, prompts: list[str], num_steps: int, guidance: float, size: int, draws: int):
    """Per step k: (t_k, σ_k, mean over `draws` advantage draws of ‖∇_θ mean_i A_i·log π_k(i)‖)."""
    trajectory = sample_ddim_trajectory(
        pipe, prompts, num_steps, guidance, generator=torch.Generator().manual_seed(0), height=size, width=size
    )
    transitions = DDIMTransitions(
        pipe.scheduler,
        trajectory.timesteps,
        trajectory.latents,
        trajectory.prompt_embeds,
        trajectory.negative_prompt_embeds,
        guidance,
        eta=1.0,
    )
    weights = [w.requires_grad_(True) for w in pipe.unet.parameters()]
    rows, generator = torch.arange(len(prompts)), torch.Generator().manual_seed(1)
    advantages = torch.randn(draws, len(prompts), generator=generator)
    out = []
    for k in range(num_steps):
        mean, std = transitions.gaussian(pipe.unet, rows, torch.full((len(prompts),), k))
        log_prob = gaussian_log_prob(trajectory.latents[:, k + 1], mean, std)
        norms = []
        for a in advantages:
            grads = torch.autograd.grad((a * log_prob).mean(), weights, retain_graph=True)
            norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
        out.append((int(trajectory.timesteps[k]), float(std.flatten()[0]), sum(norms) / draws))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ddpo-tiny-cpu")
    parser.add_argument("--steps", default="4,8,16", help="H values, comma-separated")
    parser.add_argument("--draws", type=int, default=4, help="advantage draws averaged per step")
    parser.add_argument("--out", default="docs/results/ddpo_step_gradients.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config(args.preset)
    s = config.sampling
    pipe = load_pipeline(config.model.name, seed=config.model.seed)
    prompts = (load_prompts(config.prompts.source, config.prompts.limit) * s.batch_size)[: s.batch_size]
    lines = [
        "# DDPO's policy gradient by DDIM step, on the toy",
        "",
        f"Written by `python benchmarks/bench_ddpo_step_gradients.py` ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}): `{args.preset}`'s model `{config.model.name}`, {s.batch_size} chains at "
        f"{s.height} px, guidance {s.guidance_scale}, η = 1; ‖∇‖ = norm over the UNet's weights of the gradient of "
        f"mean_i A_i·log π_k(i), A ~ N(0, 1), mean of {args.draws} draws; share = ‖∇‖ / Σ_k ‖∇‖.",
        "",
        "| H | step k | t_k | σ_k | ‖∇‖ | share |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for num_steps in (int(h) for h in args.steps.split(",")):
        rows = step_gradient_norms(pipe, prompts, num_steps, s.guidance_scale, s.height, args.draws)
        total = sum(norm for _, _, norm in rows)
        for k, (t, sigma, norm) in enumerate(rows):
            lines.append(f"| {num_steps} | {k} | {t} | {sigma:.3f} | {norm:.3g} | {norm / total:.0%} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
