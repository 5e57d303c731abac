"""`rlcm plan`: what a preset needs on a GPU, per actor, before renting one.

Everything is measured with torch's own instruments on fake tensors (no memory, no weights):
`FlopCounterMode` counts FLOPs (2 per multiply-add) of one UNet call, one VAE decode, the reward model and
the training backward passes; `MemTracker` (torch.distributed._tools) records the peak memory of the same
calls under `FakeTensorMode`. The preset's formulas then assemble them: rollout actor = frozen base (model
dtype) + LoRA + peak of one no-grad UNet call / VAE decode; PPO learner = base + LoRA, grads and AdamW state (fp32)
+ peak of one UNet forward+backward at the update's largest call (`pairs_per_call` pairs, `learner.ppo.calls`
counts the calls; auto: the most that fit; DDPO's DDIM policy: every UNet batch doubled by classifier-free
guidance, H actions per chain instead of H−1, × timestep_fraction; an algorithm with its own update loop, D3PO
and DiffusionNFT: `Algorithm.training_calls` per pass, e.g. NFT's calls with grad plus frozen forwards for θ_old and
the base, conditional only, and a second LoRA); ROCM learner = base + LoRA state +
reward model + the chain of UNet calls with grad (`Algorithm.grad_calls`: 2H-1 with the divergence penalty, K+1
under truncation K, else H): with gradient checkpointing one recomputed UNet call at a time plus the saved call
inputs, without it the activations of all of them, + VAE decode and reward forward+backward; reward deployment
= its weights and activations, in the fraction of a GPU its Serve config (`cluster/serve/*.yaml`) asks.
Advice on what to change: `rlcm.planning.advice`.
"""

from __future__ import annotations

import json
from typing import Any

from rlcm.config.schema import ConfigError, TrainConfig, with_overrides
from rlcm.planning.advice import advise
from rlcm.planning.assembly import RESERVED, assemble
from rlcm.planning.gpus import resolve_gpu, serve_share
from rollout.samplers import is_toy


def plan(config: TrainConfig, gpu: str = "h100-80gb", mfu: float = 0.35) -> dict[str, Any]:
    """The plan of `config` on `gpu` (any spelling `rlcm.planning.gpus.resolve_gpu` reads) as a JSON-ready dict."""
    kind, note = resolve_gpu(gpu)
    if is_toy(config.model.name):
        raise ConfigError(
            f"rlcm plan is for real models; the tiny toy {config.model.name!r} runs on any CPU (try --config "
            "compression)"
        )
    a = assemble(config, kind)
    p, (rw_params, rw_fwd, _, _) = a.pieces, a.reward
    share = serve_share(config.reward.name)
    return {
        "preset_algorithm": config.algorithm,
        "gpu": kind.kind,
        "gpu_note": note,
        "gpu_memory_bytes": kind.memory_bytes,
        "gpu_bf16_flops": kind.bf16_flops,
        "reserved_bytes": RESERVED,
        "resolution": p.resolution,
        "dtype": "bfloat16" if config.model.dtype == "auto" else config.model.dtype,
        "num_steps": config.sampling.num_steps,
        "parameters": {
            "unet": p.unet_params,
            "vae": p.vae_params,
            "text_encoder": p.text_params,
            "lora": p.lora_params,
            "reward": rw_params,
        },
        "flops": {
            "unet_call": p.unet_call_flops,
            "unet_train_call": p.unet_train_flops,
            "vae_decode": p.vae_decode_flops,
            "reward_forward": rw_fwd,
            "per_sample": a.per_sample,
        },
        "activations_per_image": {
            "unet_call_nograd": p.unet_nograd_peak,
            "unet_call_train": p.unet_train_peak,
            "unet_call_saved_for_backward": p.unet_saved,
            "vae_decode_nograd": p.vae_nograd_peak,
        },
        "actors": [
            {
                "role": x.role,
                "memory_bytes": x.memory_bytes,
                "budget_bytes": x.budget_bytes,
                "gpu_fraction": x.gpu_fraction,
                "fits": x.fits,
                "parts": x.parts,
            }
            for x in a.actors
        ],
        "reward_serve_config": share[2] if any(x.role.startswith("reward deployment") for x in a.actors) else None,
        "update": a.update,
        "gpus": a.gpus,
        "mfu": mfu,
        "samples_per_s": (a.gpus or 1) * kind.bf16_flops * mfu / a.per_sample,
        "advice": advise(config, kind, a.actors),
    }


def format_plan(name: str, result: dict[str, Any]) -> str:
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    f = result["flops"]
    lines = [
        f"plan of {name} on {result['gpu']} ({result['resolution']} px, base in {result['dtype']}, "
        f"H={result['num_steps']}):",
        *([f"  note: {result['gpu_note']}"] if result["gpu_note"] else []),
        f"  FLOPs: UNet call {f['unet_call'] / 1e9:.1f} G, VAE decode {f['vae_decode'] / 1e9:.1f} G, reward forward "
        f"{f['reward_forward'] / 1e9:.1f} G, per trained sample {f['per_sample'] / 1e12:.2f} T",
        f"  predicted {result['samples_per_s']:.2f} samples/s on {result['gpus']:g} GPU(s) at MFU {result['mfu']:.0%}",
    ]
    if u := result["update"]:
        fits = u["fitting_pairs_per_call"]
        lines.append(
            f"  PPO update, per learner: {u['unet_calls']} UNet calls ({u['recompute_calls']} recomputing π_old), up "
            f"to {u['pairs_per_call']} (sample, step) pairs = {u['images_per_call']} images per call"
            + (" (pairs_per_call auto)" if u["auto"] else "")
            + "; "
            + (f"the most that fits: pairs_per_call={fits}" if fits else "not even one minibatch a call fits")
        )
    for a in result["actors"]:
        share = f" ({a['gpu_fraction']:g} GPU)" if a["gpu_fraction"] < 1 else ""
        lines.append(
            f"  {a['role']}: {gib(a['memory_bytes'])} of {gib(a['budget_bytes'])}{share} -> "
            f"{'fits' if a['fits'] else 'DOES NOT FIT'}"
        )
        lines.extend(f"      {k}: {gib(v)}" for k, v in a["parts"].items())
    if result["reward_serve_config"]:
        lines.append(f"  reward deployment GPU share: {result['reward_serve_config']}")
    lines.extend(f"  change: {item['text']}" for item in result["advice"])
    return "\n".join(lines)


def plan_main(name: str, config: TrainConfig, gpu: str, mfu: float, as_json: bool) -> int:
    result = plan(config, gpu, mfu)
    print(json.dumps(result, indent=1) if as_json else format_plan(name, result))
    return 0 if all(a["fits"] for a in result["actors"]) else 3


def resolve_auto_pairs(config: TrainConfig, accelerator: str | None) -> tuple[TrainConfig, str | None]:
    """`pairs_per_call: auto` resolved for learners on `accelerator` (a GPU name, as Ray or torch report it): the
    largest the plan says fits there; none (one UNet call per minibatch step) for CPU learners, toy models and GPU
    kinds the plan does not know. Returns the config and a line saying what was chosen (None: nothing to resolve)."""
    if getattr(config.settings, "pairs_per_call", None) != "auto":
        return config, None
    fits, where = None, "CPU learners"
    if config.resources.learner_gpus and accelerator and not is_toy(config.model.name):
        try:
            kind, _ = resolve_gpu(accelerator)
            fits, where = assemble(config, kind).update["fitting_pairs_per_call"], f"{kind.kind} learners"
        except ConfigError:
            where = f"a GPU kind rlcm plan does not know ({accelerator})"
    elif config.resources.learner_gpus:
        where = "the toy model" if is_toy(config.model.name) else "an undetected GPU kind"
    key = f"{config.algo.section}.pairs_per_call"
    resolved = with_overrides(config, [f"{key}={'null' if fits is None else fits}"])
    return resolved, f"{key}: auto -> {fits or 'none (one UNet call per minibatch step)'} on {where}"


def flop_model(config: TrainConfig, accelerator: str | None) -> tuple[int, float, float] | None:
    """(FLOPs per trained sample, GPUs the run holds, bf16 peak FLOP/s of one) on `accelerator` (a GPU name), for
    the metrics rows' `perf_tflops_per_gpu` and `perf_mfu`; None on CPU, for toys and for GPU kinds the plan does
    not know."""
    if not accelerator or is_toy(config.model.name):
        return None
    try:
        kind, _ = resolve_gpu(accelerator)
    except ConfigError:
        return None
    a = assemble(config, kind)
    return a.per_sample, a.gpus, kind.bf16_flops
