"""Throughput of the presets on one GPU, side by side with a port of the reference loop (issue 24).

For `aesthetic` (RLCM), `rocm-aesthetic` and `ddpo-aesthetic` at their resolution (512 px) with random-weight
full-size models (built from the shipped architectures, nothing downloaded; the aesthetic reward on a random CLIP
ViT-L/14), one epoch of one GPU's share, phase by phase: the rollout batch (`sample_trajectory`), its reward, and
the learner's update with the preset's settings (`pairs_per_call: auto` resolved for this GPU as a run resolves it;
ROCM: its own chains with grad, 4 of the preset's 50 per epoch). Then the reference loop on the same GPU: the RLCM
authors' structure (one forward+backward per (minibatch of 2, timestep), per-call host syncs for the diagnostics, no
batching across steps) on the `aesthetic` epoch's trajectory. Each phase runs once to warm up, then once timed.
Reports samples/s, achieved TFLOP/s and MFU (the `rlcm plan` FLOPs per trained sample against the GPU's bf16 peak,
from its name), the peak memory and each phase's seconds; writes `<out>.md` and `<out>.json`.

    bash benchmarks/gpu_round.sh            # on a GPU: this table, then the rest of the round
    bash benchmarks/gpu_round.sh --smoke    # CPU, toy models at 32 px: checks that it runs (no speed figures)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PRESETS = ("aesthetic", "rocm-aesthetic", "ddpo-aesthetic")
ONE_GPU = ["resources.num_rollout_actors=1", "resources.num_learners=1", "sampling.batches_per_epoch=1"]
CLIP = "reward.options.clip_model=random:openai/clip-vit-large-patch14"
LCM, SD = "model.name=random:SimianLuo/LCM_Dreamshaper_v7", "model.name=random:runwayml/stable-diffusion-v1-5"
REAL = {  # random weights; one rollout batch per epoch: optimizer windows that fit its minibatches
    "aesthetic": [LCM, CLIP, "train.grad_accum_steps=4"],
    "rocm-aesthetic": [LCM, CLIP, "rocm.updates_per_epoch=4"],  # 4 of the preset's 50 chains with grad
    "ddpo-aesthetic": [SD, CLIP, "ddpo.grad_accum_steps=2"],
}
SMOKE = {  # the toys at 32 px, 2 steps' worth of work, the cheap differentiable reward
    "aesthetic": ["model.name=tiny", "train.train_batch_size=2", "train.grad_accum_steps=1"],
    "rocm-aesthetic": ["model.name=tiny", "rocm.updates_per_epoch=1"],
    "ddpo-aesthetic": ["model.name=tiny-ddim", "ddpo.train_batch_size=2", "ddpo.grad_accum_steps=1"],
}
SMOKE_ALL = ["sampling.height=32", "sampling.width=32", "sampling.num_steps=2", "sampling.batch_size=2"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn):
    """(seconds of the second call, its result); the first call warms up."""
    fn()
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def configure(preset: str, smoke: bool):
    from rlcm.config.schema import load_config

    overrides = ONE_GPU + (SMOKE[preset] + SMOKE_ALL + ["reward.name=smoothness"] if smoke else REAL[preset])
    return load_config(preset, overrides)


def build_learner(config, device: torch.device, gpu: str | None):
    from rlcm.planning.plan import resolve_auto_pairs

    config, _ = resolve_auto_pairs(config, gpu)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    common = dict(model=config.model.name, lora=config.model.lora, seed=0, model_seed=0, dtype=dtype)
    return config.algo.learner_spec(config, {**common, "device": str(device)}).build(), config


def epoch(config, learner, reward, device: torch.device, reference: bool = False) -> dict:
    """Seconds of each phase of one epoch of `config` on this device, and the samples it trained."""
    from rollout.policies import sample_trajectory

    s = config.sampling
    prompts = (["a photo of a cat", "a dog running", "a bird on a branch", "a horse in a field"] * 4)[: s.batch_size]

    def rollout():
        with torch.no_grad():
            return sample_trajectory(
                learner.pipe,
                prompts,
                s.num_steps,
                s.guidance_scale,
                torch.Generator(device=device).manual_seed(0),
                height=s.height,
                width=s.width,
                policy_version=learner.version,
                **({"eta": config.algo.eta(config)} if config.algo.eta(config) is not None else {}),
            )

    rollout_s, trajectory = timed(device, rollout)
    with torch.no_grad():
        reward_s, _ = timed(device, lambda: reward(trajectory.images.to(device).float() / 255, prompts))
    if config.algo.source.learners_sample:
        from learner.algorithms.rocm.lam_controller import controller_for

        samples, lam = config.algo.prompts_per_epoch(config), controller_for(config.settings, None).lam
        train_s, _ = timed(device, lambda: learner.train((prompts * samples)[:samples], lam))
    else:
        samples, advantages = s.batch_size, np.linspace(-1.0, 1.0, s.batch_size)
        update = (lambda: reference_update(learner, trajectory, advantages)) if reference else None
        train_s, _ = timed(device, update or (lambda: learner.train(trajectory, advantages)))
    return {"samples": samples, "rollout_s": rollout_s, "reward_s": reward_s, "train_s": train_s}


def reference_update(learner, trajectory, advantages) -> dict:
    """The reference loop: per (minibatch of train_batch_size, timestep) one forward+backward, host syncs for the
    diagnostics after every call, an optimizer step every grad_accum_steps minibatches × timesteps."""
    from learner.optim import optimizer_step
    from learner.ppo.old_log_probs import call_log_prob
    from rollout.policies import policy_for

    s, device = learner.settings, learner.device
    transitions = policy_for(learner.pipe).transitions(learner.pipe, trajectory.to(device))
    old = trajectory.log_probs.to(device)
    adv = torch.as_tensor(advantages, dtype=torch.float32, device=device).clamp(-s.adv_clip_max, s.adv_clip_max)
    n, steps = old.shape
    info: dict[str, list[float]] = {"approx_kl": [], "clipfrac": [], "loss": []}
    learner.pipe.unet.train()
    calls = 0
    for start in range(0, n, s.train_batch_size):
        rows = torch.arange(start, min(start + s.train_batch_size, n), device=device)
        for j in torch.randperm(steps).tolist():
            k = torch.full_like(rows, j)
            log_prob = call_log_prob(learner.pipe.unet, transitions, rows, k)[0]
            ratio = torch.exp(log_prob - old[rows, k])
            clipped = torch.clamp(ratio, 1.0 - s.clip_range, 1.0 + s.clip_range)
            loss = torch.maximum(-adv[rows] * ratio, -adv[rows] * clipped).mean()
            (loss / (s.grad_accum_steps * steps)).backward()
            info["approx_kl"].append((0.5 * (log_prob - old[rows, k]) ** 2).mean().item())
            info["clipfrac"].append(((ratio - 1.0).abs() > s.clip_range).float().mean().item())
            info["loss"].append(loss.item())
            calls += 1
            if calls % (s.grad_accum_steps * steps) == 0:
                optimizer_step(learner.optimizer, learner.params, s.max_grad_norm)
    learner.pipe.unet.eval()
    return {key: float(np.mean(values)) for key, values in info.items()}


def measure(name: str, config, learner, reward, device, peak: float | None, flops: int | None, **options) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phases = epoch(config, learner, reward, device, **options)
    seconds = phases["rollout_s"] + phases["reward_s"] + phases["train_s"]
    tflops = phases["samples"] * flops / seconds / 1e12 if flops else None
    return {
        "run": name,
        **phases,
        "samples_per_s": phases["samples"] / seconds,
        "tflops": tflops,
        "mfu": tflops * 1e12 / peak if tflops and peak else None,
        "pairs_per_call": getattr(config.settings, "pairs_per_call", None) if not options else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="CPU, toy models at 32 px: checks that it runs")
    parser.add_argument("--out", default="docs/results/gpu_throughput", help="writes OUT.md and OUT.json")
    args, _ = parser.parse_known_args(argv)

    from rewards_service.registry import build_differentiable_reward
    from rlcm.planning.gpus import resolve_gpu
    from rlcm.planning.plan import flop_model

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    try:
        peak = resolve_gpu(gpu)[0].bf16_flops if gpu else None
    except ValueError:
        peak = None
    rows = []
    for preset in PRESETS:
        config = configure(preset, args.smoke)
        learner, config = build_learner(config, device, gpu)
        reward = build_differentiable_reward(config.reward.name, **config.reward.options).to(device)
        flops = None if args.smoke else flop_model(config, "h100")[0]  # per trained sample: the same on any GPU
        rows.append(measure(preset, config, learner, reward, device, peak, flops))
        print(rows[-1], flush=True)
        if preset == "aesthetic":  # the reference loop on the same learner, model and trajectory shapes
            reference = measure(
                "aesthetic, reference loop", config, learner, reward, device, peak, flops, reference=True
            )
            rows.append(reference)
            print(rows[-1], flush=True)
        del learner, reward
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write(Path(args.out), gpu or "CPU (smoke: toy models, no speed figures)", peak, rows)
    return rows


def write(out: Path, device: str, peak: float | None, rows: list[dict]) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    ratio = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
    lines = [
        f"# GPU throughput: {device}",
        "",
        "Generated by `bash benchmarks/gpu_round.sh` (`benchmarks/gpu_throughput.py`): one epoch of one GPU's share "
        "per preset, random weights at the real architectures"
        + (f", bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "")
        + f". RLCM (`aesthetic`) vs the reference loop on the same GPU: **{ratio:.2f}×** the samples/s.",
        "",
        "| run | samples | rollout s | reward s | train s | samples/s | TFLOP/s | MFU | pairs/call | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['run']} | {r['samples']} | {r['rollout_s']:.2f} | {r['reward_s']:.2f} | {r['train_s']:.2f} | "
            f"{r['samples_per_s']:.3g} | {fmt(r['tflops'], '.1f')} | {fmt(r['mfu'], '.0%')} | "
            f"{fmt(r['pairs_per_call'], '')} | {fmt(r['peak_memory_gb'], '.1f')} |"
            for r in rows
        ),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"device": device, "bf16_peak": peak, "ratio": ratio, "rows": rows}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
