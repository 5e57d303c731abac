"""One benchmark round on a GPU at the real architectures (random weights), compared with `rlcm plan`.

Measures at 512 px (default): rollout images/s (`sample_trajectory`), its overhead vs the stock `pipe(...)`,
PPO samples/s (one learner update), the rollout/learner log-prob gap and the first PPO pass's ratio without and with
π_old recomputation at the aesthetic preset's batch shapes, ROCM samples/s and peak memory with and without gradient
checkpointing (aesthetic reward on a random CLIP ViT-L/14), the time to move a rank-16 LoRA adapter through the Ray
object store to another process, achieved TFLOP/s and MFU vs the device's bf16 peak. Writes
docs/results/gpu.md. `--smoke` runs the same code at 32 px, 2 steps, batch 1 (CPU: checks it runs).

    bash benchmarks/gpu_round.sh            # GPU, < 8 min
    .venv/bin/python benchmarks/gpu_round.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "random:SimianLuo/LCM_Dreamshaper_v7"
PEAKS = {"H100": 989e12, "A100": 312e12, "A6000": 154.8e12, "L4": 121e12, "L40S": 362e12, "H200": 989e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn, repeats: int = 1) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def peak_memory(device: torch.device, fn) -> tuple[float, int | None]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(device, fn)
    return seconds, torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="32 px, 2 steps, batch 1: checks the script runs (CPU)")
    parser.add_argument("--out", default="docs/results/gpu.md")
    args = parser.parse_args()
    res, steps, batch = (32, 2, 1) if args.smoke else (512, 8, 4)

    from learner.algorithms.rocm.objective import rocm_objective
    from learner.algorithms.rocm.settings import ROCMSettings
    from learner.optim import build_optimizer
    from learner.ppo.learner import LearnerSpec, PPOLearner
    from learner.ppo.settings import PPOSettings
    from rewards_service.registry import build_differentiable_reward
    from rlcm.config.schema import load_config
    from rlcm.planning.plan import plan
    from rollout.lora import add_lora, export_adapter
    from rollout.models import load_pipeline
    from rollout.policies import sample_trajectory
    from rollout.settings import LoraSettings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    lora = LoraSettings(rank=16, alpha=32)
    dtype = torch.bfloat16
    rows: list[tuple[str, str]] = []

    def add(*items: tuple[str, str]) -> None:
        rows.extend(items)
        for k, v in items:
            print(f"{k}: {v}", flush=True)

    prompts = ["a photo of a cat", "a dog running", "a bird on a branch", "a horse in a field"][:batch]
    gen = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731

    config = load_config(
        "rocm-aesthetic", [f"sampling.height={res}", f"sampling.width={res}", f"sampling.num_steps={steps}"]
    )
    planned = plan(config, "h100-80gb")
    unet_flops, vae_flops = planned["flops"]["unet_call"], planned["flops"]["vae_decode"]

    # rollout
    pipe = load_pipeline(MODEL, device=device, dtype=dtype)
    add_lora(pipe.unet, lora)
    pipe.unet.requires_grad_(False)
    rollout_s, rollout_mem = peak_memory(
        device, lambda: sample_trajectory(pipe, prompts, steps, 8.0, gen(), height=res, width=res)
    )
    stock_s = timed(
        device,
        lambda: pipe(
            prompts,
            num_inference_steps=steps,
            guidance_scale=8.0,
            height=res,
            width=res,
            output_type="pt",
            generator=gen(),
        ),
    )
    rollout_tflops = batch * (steps * unet_flops + vae_flops) / rollout_s / 1e12
    add(
        *[
            ("rollout images/s", f"{batch / rollout_s:.2f} (batch {batch}, {steps} steps, {res} px)"),
            (
                "sample_trajectory vs stock pipe(...)",
                f"{rollout_s:.2f} s vs {stock_s:.2f} s ({100 * (rollout_s / stock_s - 1):+.0f}%)",
            ),
            (
                "rollout achieved TFLOP/s",
                f"{rollout_tflops:.1f}" + (f" (MFU {rollout_tflops * 1e12 / peak:.0%})" if peak else ""),
            ),
        ]
    )
    trajectory = sample_trajectory(pipe, prompts, steps, 8.0, gen(), height=res, width=res)

    # adapter broadcast
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    adapter = export_adapter(pipe.unet, 1)

    @ray.remote
    def receive(refs):
        return sum(v.numel() for v in ray.get(refs[0]).state_dict.values())

    start = time.perf_counter()
    numel = ray.get(receive.remote([ray.put(adapter)]))
    add(
        (
            "rank-16 LoRA broadcast (put + get in another process)",
            f"{1e3 * (time.perf_counter() - start):.0f} ms for {numel * 4 / 1e6:.1f} MB",
        )
    )
    ray.shutdown()
    del pipe

    # PPO
    ppo = PPOSettings(train_batch_size=batch, grad_accum_steps=1, clip_range=1e-4)
    ppo_learner = PPOLearner(
        LearnerSpec(
            model=MODEL, lora=lora, ppo=ppo, stat_buffer_size=16, stat_min_count=1, device=str(device), dtype=dtype
        )
    )
    advantages = np.linspace(-1, 1, batch).astype(np.float32)
    ppo_s, ppo_mem = peak_memory(device, functools.partial(ppo_learner.train, trajectory, advantages))
    ppo_tflops = batch * (steps - 1) * planned["flops"]["unet_train_call"] / ppo_s / 1e12
    add(
        *[
            ("PPO samples/s", f"{batch / ppo_s:.2f} ({steps - 1} timesteps each, train batch {batch})"),
            ("PPO achieved TFLOP/s", f"{ppo_tflops:.1f}" + (f" (MFU {ppo_tflops * 1e12 / peak:.0%})" if peak else "")),
        ]
    )
    plan_ppo = plan(
        load_config(
            "compression", [f"sampling.height={res}", f"sampling.width={res}", f"train.train_batch_size={batch}"]
        ),
        "h100-80gb",
    )
    add(
        (
            "PPO learner peak memory: measured vs plan",
            _vs(ppo_mem, next(a for a in plan_ppo["actors"] if a["role"].startswith("learner"))["memory_bytes"]),
        )
    )
    add(*old_log_prob_rows(ppo_learner, prompts, steps, res, gen, args.smoke))
    pipe = ppo_learner.pipe
    params = ppo_learner.params
    del ppo_learner

    # ROCM
    reward = build_differentiable_reward("aesthetic", clip_model="random:openai/clip-vit-large-patch14").to(device)
    optimizer = build_optimizer(params, ROCMSettings())
    for checkpointing in (True, False):

        def step(checkpointing=checkpointing):
            out = rocm_objective(
                pipe,
                prompts[:1],
                steps,
                8.0,
                gen(),
                reward,
                "kl",
                0.1,
                height=res,
                width=res,
                gradient_checkpointing=checkpointing,
            )
            (-out["objective"].mean()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds, mem = peak_memory(device, step)
        cfg = load_config(
            "rocm-aesthetic",
            [
                f"sampling.height={res}",
                f"sampling.width={res}",
                f"sampling.num_steps={steps}",
                f"rocm.gradient_checkpointing={str(checkpointing).lower()}",
            ],
        )
        predicted = next(a for a in plan(cfg, "h100-80gb")["actors"] if a["role"].startswith("learner"))["memory_bytes"]
        label = "on" if checkpointing else "off"
        add(
            *[
                (f"ROCM samples/s, checkpointing {label}", f"{1 / seconds:.3f}"),
                (f"ROCM learner peak memory, checkpointing {label}: measured vs plan", _vs(mem, predicted)),
            ]
        )
    add(("rollout peak memory: measured vs plan", _vs(rollout_mem, planned["actors"][0]["memory_bytes"])))
    write(Path(args.out), name, peak, res, steps, batch, rows, args.smoke)


def old_log_prob_rows(learner, prompts: list[str], steps: int, res: int, gen, smoke: bool) -> list[tuple[str, str]]:
    """The aesthetic preset's PPO shapes (rollout batch sampling.batch_size, train_batch_size, clip_range) at the
    same weights: the rollout/learner log-prob gap and the first pass's max |ratio − 1| without and with
    recomputation."""
    import copy

    from rlcm.config.schema import load_config
    from rollout.policies import sample_trajectory

    preset = load_config("aesthetic")
    train_batch = preset.train.train_batch_size
    rollout_batch = 2 * train_batch if smoke else preset.sampling.batch_size
    trajectory = sample_trajectory(
        learner.pipe,
        (prompts * rollout_batch)[:rollout_batch],
        steps,
        8.0,
        gen(),
        height=res,
        width=res,
        policy_version=learner.version,
    )
    initial = copy.deepcopy(learner.state_dict())
    found = {}
    for recompute in (False, True):
        learner.load_state_dict(copy.deepcopy(initial))  # both updates start at the weights the rollout sampled with
        # one optimizer step after all minibatches: every (sample, step) is scored at the rollout's weights
        learner.spec.ppo = preset.train.model_copy(
            update={"recompute_old_log_probs": recompute, "grad_accum_steps": rollout_batch // train_batch}
        )
        found[recompute] = learner.train(trajectory, np.linspace(-1, 1, rollout_batch))
    off, on = found[False], found[True]
    per_step = ", ".join(f"{v:.2g}" for _, v in sorted(off["old_logprob_gap_step"].items(), key=lambda kv: int(kv[0])))
    what = (
        f"aesthetic preset: rollout batch {rollout_batch}, train batch {train_batch}, "
        f"clip_range {preset.train.clip_range:g}"
    )
    return [
        (
            f"old_logprob_gap_median / old_logprob_gap_max ({what})",
            f"{off['old_logprob_gap_median']:.3g} / {off['old_logprob_gap_max']:.3g}",
        ),
        ("old_logprob_gap_step (median per step k = 0, 1, …)", per_step),
        (
            "ratio_first_pass_max_dev, recompute_old_log_probs false / true",
            f"{off['ratio_first_pass_max_dev']:.3g} / {on['ratio_first_pass_max_dev']:.3g}",
        ),
        ("clipfrac of that update, recompute false / true", f"{off['clipfrac']:.3f} / {on['clipfrac']:.3f}"),
    ]


def _vs(measured: int | None, predicted: int) -> str:
    if measured is None:
        return f"n/a on CPU vs {predicted / 2**30:.2f} GiB"
    return f"{measured / 2**30:.2f} GiB vs {predicted / 2**30:.2f} GiB ({100 * (predicted / measured - 1):+.0f}%)"


def write(path: Path, device: str, peak: float | None, res: int, steps: int, batch: int, rows, smoke: bool) -> None:
    lines = [
        f"# GPU round: {device}",
        "",
        f"`bash benchmarks/gpu_round.sh` ({'--smoke, ' if smoke else ''}{res} px, {steps} steps, batch {batch}, "
        "random weights at the real "
        f"architectures, bf16 base; device bf16 peak {peak / 1e12:.0f} TFLOP/s)"
        if peak
        else f"`benchmarks/gpu_round.py` ({'--smoke, ' if smoke else ''}{res} px, {steps} steps, batch {batch}; "
        "no GPU: figures say nothing about GPU speed)",
        "",
        "| measure | value |",
        "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in rows]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
