"""The actors of a config on one GPU kind, assembled from the measured pieces: what `rlcm plan` prints and what its
advice plans again with changed settings."""

from __future__ import annotations

from dataclasses import dataclass

from learner.ppo.calls import steps_trained
from rlcm.config.schema import TrainConfig
from rlcm.planning.gpus import GPU, serve_share
from rlcm.planning.measure import (
    DTYPE_BYTES,
    Pieces,
    cached_measure,
    chain_bytes,
    llava_bertscore_params,
    reward_pieces,
)
from rollout.policies import POLICIES

RESERVED = int(1.5 * 2**30)  # CUDA context, allocator slack, NCCL buffers


@dataclass
class Actor:
    role: str
    memory_bytes: int
    budget_bytes: int
    gpu_fraction: float  # of one GPU, as Ray reserves it
    parts: dict[str, int]

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= self.budget_bytes


def _budget(gpu: GPU, fraction: float) -> int:
    return int(gpu.memory_bytes * min(1.0, fraction or 1.0)) - RESERVED  # 0: left to Ray; counted as a whole GPU


def _actor(role: str, parts: dict[str, int], gpu: GPU, fraction: float) -> Actor:
    return Actor(role, sum(parts.values()), _budget(gpu, fraction), min(1.0, fraction or 1.0), parts)


def ppo_learner_parts(base: int, lora_state: int, activations: int) -> dict[str, int]:
    return {
        "base weights": base,
        "LoRA + grads + AdamW (fp32)": lora_state,
        "UNet forward+backward activations (one call)": activations,
    }


def fitting_pairs_per_call(
    train_batch_size: int, window_calls: int, bytes_per_pair: int, fixed: int, budget: int
) -> int | None:
    """The largest `pairs_per_call` whose learner fits `budget`, grouping a divisor of the `window_calls` minibatch
    calls of one optimizer window (every UNet call of a window then evaluates as many pairs); None when not even one
    minibatch a call fits."""
    groups = (calls for calls in range(window_calls, 0, -1) if window_calls % calls == 0)
    return next(
        (calls * train_batch_size for calls in groups if fixed + calls * train_batch_size * bytes_per_pair <= budget),
        None,
    )


@dataclass
class Assembly:
    """The actors of `config` on one GPU kind, and the figures the plan prints beside them."""

    actors: list[Actor]
    pieces: Pieces
    reward: tuple[int, int, int, int]
    per_sample: int
    gpus: float
    update: dict | None  # PPO-style algorithms: UNet calls of one update on one learner, pairs and images per call


def assemble(config: TrainConfig, gpu: GPU) -> Assembly:
    """Memory of every actor of `config` on `gpu` and the FLOPs of one trained sample (measured pieces are cached)."""
    s, r, algo = config.sampling, config.resources, config.algo
    resolution = s.height or 512
    dtype_name = "bfloat16" if config.model.dtype == "auto" else config.model.dtype
    p = cached_measure(config.model.name, resolution, dtype_name, config.model.lora.model_dump_json())
    base = (p.unet_params + p.vae_params + p.text_params) * DTYPE_BYTES[dtype_name]
    lora_state = p.lora_params * 4 * 4  # fp32 weights, grads, AdamW m and v
    H = s.num_steps
    sampler = POLICIES[algo.sampler_for(config)]
    cfg = sampler.unet_images_per_step(s.guidance_scale)  # classifier-free guidance doubles the UNet batch (DDIM)
    rollout = {
        "base weights": base,
        "LoRA": p.lora_params * 4,
        "activations (max of UNet call / VAE decode, no grad)": s.batch_size
        * max(cfg * p.unet_nograd_peak, p.vae_nograd_peak),
        "trajectory (fp32 latents)": s.batch_size * (H + 1) * 4 * (resolution // 8) ** 2 * 4,
    }
    actors = [_actor("rollout actor", rollout, gpu, r.rollout_gpus)]
    rw = rw_params, rw_fwd, rw_train, rw_peak = reward_pieces(
        config.reward.name, config.reward.options.get("dtype", "float32")
    )
    learner = f"learner ({algo.title})"
    update = None
    if algo.source.learners_sample:  # first-order: the learner backpropagates through its own chains
        k = config.settings
        calls = algo.grad_calls(config)
        parts = {
            "base weights": base,
            "LoRA + grads + AdamW (fp32)": lora_state,
            f"reward model ({config.reward.name})": rw_params * 4,
            f"chain of {calls} UNet calls with grad "
            f"({'checkpointed' if k.gradient_checkpointing else 'all activations kept'})": k.batch_size
            * chain_bytes(p, calls, k.gradient_checkpointing),
            "VAE decode + reward forward/backward": k.batch_size * (p.vae_train_peak + rw_peak),
        }
        recompute = p.unet_call_flops if k.gradient_checkpointing else 0
        per_sample = (
            calls * (p.unet_train_flops + recompute)
            + max(0, H - calls) * p.unet_call_flops
            + p.vae_train_flops
            + rw_train
        )
    else:
        t = config.settings
        trained = steps_trained(sampler.num_actions(H), getattr(t, "timestep_fraction", 1.0))
        if not hasattr(t, "pairs_per_call"):  # its own update loop (D3PO, DiffusionNFT): one call per minibatch
            calls = algo.training_calls(config, cfg, sampler.num_actions(H))
            frozen = calls.without_grad + calls.with_grad * algo.reference_calls_per_step(config)
            parts = {
                "base weights": base,
                "LoRA + grads + AdamW (fp32)": lora_state,
                **(
                    {"frozen LoRA copies (fp32)": calls.extra_adapters * p.lora_params * 4}
                    if calls.extra_adapters
                    else {}
                ),
                "UNet forward+backward activations": t.train_batch_size * calls.images_per_call * p.unet_train_peak,
            }
            per_sample = (
                cfg * H * p.unet_call_flops
                + calls.images_per_call * (calls.with_grad * p.unet_train_flops + frozen * p.unet_call_flops)
                + p.vae_decode_flops
                + rw_fwd
            )
        else:
            fits = fitting_pairs_per_call(
                t.train_batch_size,
                min(t.grad_accum_steps, config.samples_per_epoch // r.num_learners // t.train_batch_size) * trained,
                cfg * p.unet_train_peak,
                base + lora_state,
                _budget(gpu, r.learner_gpus),
            )
            if t.pairs_per_call == "auto":  # as the driver resolves it on this GPU kind
                t = t.model_copy(update={"pairs_per_call": fits})
            calls = algo.update_calls(config, t, t.recomputes_old_log_probs(f"torch.{dtype_name}"))
            parts = ppo_learner_parts(base, lora_state, calls.pairs_per_call * cfg * p.unet_train_peak)
            update = {
                "unet_calls": calls.unet_calls(algo.unet_passes_per_call(t)),
                "pairs_per_call": calls.pairs_per_call,
                "images_per_call": calls.pairs_per_call * cfg,
                "recompute_calls": len(calls.recompute),
                "fitting_pairs_per_call": fits,
                "auto": config.settings.pairs_per_call == "auto",
            }
            train_step = p.unet_train_flops + algo.reference_calls_per_step(config) * p.unet_call_flops
            per_sample = (
                cfg * (H * p.unet_call_flops + t.inner_epochs * trained * train_step) + p.vae_decode_flops + rw_fwd
            )
    actors.append(_actor(learner, parts, gpu, r.learner_gpus))
    gpus = r.num_rollout_actors * r.rollout_gpus + r.num_learners * r.learner_gpus
    if config.reward.backend == "serve" and (rw_params or config.reward.name == "llava_bertscore"):
        share, replicas, _ = serve_share(config.reward.name)
        if share:
            if (
                config.reward.name == "llava_bertscore"
            ):  # vLLM also takes gpu_memory_utilization of the GPU for its KV cache
                llava, bert = llava_bertscore_params()
                parts = {"LLaVA-1.5-7B weights (fp16)": llava * 2, "DeBERTa-xlarge BERTScore (fp32)": bert * 4}
            else:
                parts = {"weights (fp16)": rw_params * 2, "activations": s.batch_size * rw_peak}
            actors.append(_actor(f"reward deployment ({config.reward.name})", parts, gpu, share))
            gpus += replicas * share
    return Assembly(actors, p, rw, per_sample, gpus, update)
