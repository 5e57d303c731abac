"""Core throughput of RLCM: rollout images/s, PPO samples/s, and the cost of recording log-probs.

    python benchmarks/bench_core.py                 # the toy LCM (64 px), CPU unless CUDA is there
    python benchmarks/bench_core.py --full-size     # LCM_Dreamshaper_v7 architecture, random weights, 512 px,
                                                    # bf16 on CUDA

What is timed (median over --repeats, after --warmup rounds):
- rollout: `rollout.policies.sample_trajectory` (H UNet calls, log π per step, decode to uint8) → images/s;
- plain:   stock `pipe(...)` (the diffusers LatentConsistencyModelPipeline loop) at the same batch, steps,
           guidance and LoRA, output_type="pt" → images/s; overhead = rollout time / plain time − 1 (target ≤ 5%);
- PPO:     `learner.ppo.update.ppo_update` over one batch of trajectories (H−1 transitions per sample, forward +
           backward through the UNet with LoRA, optimizer steps) → samples/s.

Figures are in docs/results/core.md with the device named. Toy, CPU, 2 cores (quiet run):
rollout 11.09 images/s, plain pipe(...) 11.61 images/s, log-prob overhead +4.6%, PPO 3.99 samples/s.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (toy LCM) or a hub id / local folder of a real LCM")
    parser.add_argument(
        "--full-size", action="store_true", help="LCM_Dreamshaper_v7 at full size with random weights (random:<hub id>)"
    )
    parser.add_argument(
        "--resolution", type=int, default=None, help="image size in px (default: 64 toy, 512 full size)"
    )
    parser.add_argument("--batch", type=int, default=None, help="images per rollout call (default: 8 toy, 4 full size)")
    parser.add_argument("--steps", type=int, default=8, help="H, LCM inference steps")
    parser.add_argument("--guidance", type=float, default=8.0)
    parser.add_argument("--train-batch", type=int, default=None, help="PPO minibatch (default: 4 toy, 2 full size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--skip-ppo", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np

    from learner.optim import build_optimizer
    from learner.ppo.settings import PPOSettings
    from learner.ppo.update import TrainBatch, ppo_update
    from rollout.lora import LoraSettings, add_lora
    from rollout.models import DEFAULT_REAL_MODEL, load_pipeline
    from rollout.policies import policy_for, sample_trajectory
    from rollout.precision import dtypes_for

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtypes_for(args.dtype, device).base
    toy = args.model == "tiny" and not args.full_size
    batch = args.batch or (8 if toy else 4)
    train_batch = args.train_batch or (4 if toy else 2)
    if args.full_size:
        resolution = args.resolution or 512
        pipe = load_pipeline(f"random:{DEFAULT_REAL_MODEL}", device=device, dtype=dtype)
        unet_params = sum(p.numel() for p in pipe.unet.parameters())
        label = f"LCM_Dreamshaper_v7 architecture (random weights, {unet_params / 1e6:.0f}M UNet params)"
    else:
        pipe = load_pipeline(args.model, device=device, dtype=dtype)
        resolution = args.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        label = "toy LCM" if toy else args.model
    if toy:
        lora = LoraSettings(
            rank=8, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out"]
        )
    else:
        lora = LoraSettings(rank=16, alpha=32)
    torch.manual_seed(0)
    params = add_lora(pipe.unet, lora)
    with torch.no_grad():  # a non-zero adapter, as after training
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    pipe.unet.requires_grad_(False)

    prompts = [f"a photo of animal number {i}" for i in range(batch)]
    gen = lambda seed: torch.Generator(device=device).manual_seed(seed)  # noqa: E731

    def rollout(seed: int = 0):
        return sample_trajectory(
            pipe, prompts, args.steps, args.guidance, gen(seed), height=resolution, width=resolution
        )

    def plain(seed: int = 0):
        with torch.no_grad():
            return pipe(
                prompt=prompts,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=gen(seed),
                height=resolution,
                width=resolution,
                output_type="pt",
            ).images

    for i in range(args.warmup):
        rollout(i)
        plain(i)
    t_rollout, t_plain = [], []
    for i in range(args.repeats):  # interleaved so drift hits both alike
        t_rollout.append(timed(lambda i=i: rollout(100 + i), device))
        t_plain.append(timed(lambda i=i: plain(100 + i), device))
    med_r, med_p = statistics.median(t_rollout), statistics.median(t_plain)
    results = {
        "rollout_images_per_s": batch / med_r,
        "plain_images_per_s": batch / med_p,
        "logprob_overhead_pct": 100.0 * (med_r / med_p - 1.0),
    }

    if not args.skip_ppo:
        for p in params:
            p.requires_grad_(True)
        settings = PPOSettings(learning_rate=1e-4, clip_range=1e-4, train_batch_size=train_batch, grad_accum_steps=1)
        optimizer = build_optimizer(params, settings)
        traj = rollout(7).to(device)
        adv = torch.as_tensor(np.linspace(-1, 1, batch), dtype=torch.float32, device=device)
        train_batch_data = TrainBatch(
            transitions=policy_for(pipe).transitions(pipe, traj), old_log_probs=traj.log_probs, advantages=adv
        )
        torch_gen = torch.Generator().manual_seed(0)
        update = lambda: ppo_update(pipe.unet, optimizer, params, train_batch_data, settings, torch_gen)  # noqa: E731
        for _ in range(args.warmup):
            first = update()
        t_ppo = [timed(update, device) for _ in range(max(1, args.repeats // 2))]
        results["ppo_samples_per_s"] = batch / statistics.median(t_ppo)
        results["ppo_transitions_per_s"] = batch * (args.steps - 1) / statistics.median(t_ppo)
        if args.warmup:
            results["first_update_ratio_max_dev"] = max(abs(first["ratio_max"] - 1), abs(first["ratio_min"] - 1))

    print(f"device: {device_name(device)}; dtype {str(dtype).removeprefix('torch.')}")
    print(
        f"model: {label}; {resolution}x{resolution} px; batch {batch}; H={args.steps}; LoRA rank {lora.rank}/alpha "
        f"{lora.alpha:g}"
    )
    print(
        f"rollout (sample_trajectory): {results['rollout_images_per_s']:.2f} images/s  (median of {args.repeats}: "
        f"{med_r:.3f} s/batch)"
    )
    print(f"plain pipe(...):             {results['plain_images_per_s']:.2f} images/s  ({med_p:.3f} s/batch)")
    print(f"log-prob recording overhead: {results['logprob_overhead_pct']:+.1f}% (target <= 5%)")
    if "ppo_samples_per_s" in results:
        print(
            f"PPO (ppo_update, minibatch {train_batch}): {results['ppo_samples_per_s']:.2f} samples/s "
            f"({results['ppo_transitions_per_s']:.1f} transitions/s)"
        )
    return results


if __name__ == "__main__":
    main()
