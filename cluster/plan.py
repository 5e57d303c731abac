"""`rlcm plan`: what a preset needs on a GPU, per actor, before renting one.

Everything is measured with torch's own instruments on fake tensors (no memory, no weights):
`FlopCounterMode` counts FLOPs (2 per multiply-add) of one UNet call, one VAE decode, the reward model and
the training backward passes; `MemTracker` (torch.distributed._tools) records the peak memory of the same
calls under `FakeTensorMode`. The preset's formulas then assemble them: rollout actor = frozen base (model
dtype) + LoRA + peak of one no-grad UNet call / VAE decode; PPO learner = base + LoRA, grads and AdamW
state (fp32) + peak of one UNet forward+backward at train_batch_size (DDPO's DDIM policy: every UNet batch doubled by
classifier-free guidance, H actions per chain instead of H−1, × timestep_fraction); ROCM learner = base + LoRA state +
reward model + the chain of UNet calls with grad (`Algorithm.grad_calls`: 2H-1 with the divergence penalty, K+1
under truncation K, else H): with gradient checkpointing one recomputed UNet call at a time plus the saved call
inputs, without it the activations of all of them, + VAE decode and reward forward+backward; reward deployment
= its weights and activations, in the fraction of a GPU its Serve config (`cluster/serve/*.yaml`) asks.
Advice on what to change: `cluster.plan_advice`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cluster.config import ConfigError, TrainConfig
from cluster.gpus import GPU, resolve_gpu, serve_share
from learner.ppo import steps_trained
from rollout.policies import POLICIES
from rollout.samplers import is_toy

RESERVED = int(1.5 * 2**30)  # CUDA context, allocator slack, NCCL buffers
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
REWARD_BACKBONES = {
    "aesthetic": "openai/clip-vit-large-patch14",
    "clip_score": "openai/clip-vit-large-patch14",
    "pickscore": "yuvalkirstain/PickScore_v1",
    "hpsv2": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
}


def _flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that ops create and that stay alive (held by Python or by autograd), on any
    device, meta included: each op's outputs are registered by storage; a storage counts until it is freed."""

    def __init__(self, modules: tuple[torch.nn.Module, ...] = ()) -> None:
        super().__init__()
        self.live: dict[int, tuple[Any, int]] = {}
        self.peak = 0
        # weights are not activations: views of them (the transposes inside linear layers) are not counted
        self.weights = {t.untyped_storage()._cdata for m in modules for t in [*m.parameters(), *m.buffers()]}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.weights:
                    self.live.setdefault(storage._cdata, (StorageWeakRef(storage), storage.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _peak(module: torch.nn.Module, fn: Callable[[], Any]) -> int:
    """Peak bytes of everything `fn` allocates (activations, temporaries, grads), `module`'s weights excluded;
    attention as a fused kernel allocates (`_FusedAttention`)."""
    from unittest import mock

    with (
        mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa),
        LiveBytes((module,)) as tracker,
    ):
        fn()
    return tracker.peak


class _FusedAttention(torch.autograd.Function):
    """Memory stand-in for a fused attention kernel (flash / memory-efficient, as on GPU and in torch's CPU kernel):
    it keeps q, k, v, the output and the row log-sum-exp, never the N×N scores. On meta tensors torch would
    otherwise decompose attention into explicit matmuls and a materialized fp32 score matrix."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    return _FusedAttention.apply(query, key, value)


def _bmm_attention(module: torch.nn.Module) -> None:
    """Explicit-matmul attention (diffusers' AttnProcessor), so FlopCounterMode counts it on any device."""
    from diffusers.models.attention_processor import AttnProcessor

    module.set_attn_processor(AttnProcessor())


@dataclass
class Pieces:
    """Measured per-image figures of one architecture at one resolution and dtype."""

    resolution: int
    unet_call_flops: int
    unet_train_flops: int  # forward + backward of one call, LoRA trainable
    vae_decode_flops: int
    vae_train_flops: int
    unet_params: int
    lora_params: int
    vae_params: int
    text_params: int
    unet_nograd_peak: int  # per image
    unet_train_peak: int  # fwd+bwd, per image
    unet_saved: int  # activations one call with grad keeps for backward, per image
    unet_input: int  # what a checkpointed call keeps (its inputs), per image
    vae_nograd_peak: int
    vae_train_peak: int


def measure(model: str, resolution: int, dtype: torch.dtype, lora, batch: int = 1) -> Pieces:
    """FLOPs and memory of the UNet and VAE of `random:<model>` at `resolution`, on fake tensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rollout.architectures import _config, architecture_dir
    from rollout.lora import add_lora

    folder = architecture_dir(model if model.startswith("random:") else "random:" + model)
    latent = resolution // 8
    with torch.device("meta"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            unet = UNet2DConditionModel.from_config(_config(folder, "unet")).eval()
            vae = AutoencoderKL.from_config(_config(folder, "vae")).eval()
            text = CLIPTextModel(CLIPTextConfig(**_config(folder, "text_encoder")))
        finally:
            torch.set_default_dtype(previous)
        unet.requires_grad_(False), vae.requires_grad_(False)
        unet_params = sum(p.numel() for p in unet.parameters())
        lora_params = sum(p.numel() for p in add_lora(unet, lora))  # fp32 adapter, as training runs it
        cross = unet.config.cross_attention_dim

        def inputs(b: int, grad: bool = False):
            x = torch.randn(b, 4, latent, latent, dtype=dtype, requires_grad=grad)
            cond = unet.config.time_cond_proj_dim  # the LCM guidance embedding; None for Stable Diffusion (DDPO)
            return (
                x,
                torch.full((b,), 500),
                torch.randn(b, 77, cross, dtype=dtype),
                torch.randn(b, cond, dtype=dtype) if cond else None,
            )

        def unet_fwd(b: int):
            x, t, e, w = inputs(b)
            with torch.no_grad():
                unet(x, t, e, timestep_cond=w)

        def unet_train(b: int):
            x, t, e, w = inputs(b, grad=True)
            unet(x, t, e, timestep_cond=w).sample.float().square().mean().backward()

        def vae_fwd(b: int, grad: bool = False):
            z = torch.randn(b, 4, latent, latent, dtype=dtype, requires_grad=grad)
            with torch.set_grad_enabled(grad):
                out = vae.decode(z / vae.config.scaling_factor).sample
            if grad:
                out.float().mean().backward()

        unet_nograd = _peak(unet, lambda: unet_fwd(batch)) // batch
        unet_train_peak = _peak(unet, lambda: unet_train(batch)) // batch
        saved = _saved_bytes(unet, inputs, batch) // batch
        vae_nograd = _peak(vae, lambda: vae_fwd(batch)) // batch
        vae_train = _peak(vae, lambda: vae_fwd(batch, True)) // batch
        _bmm_attention(unet), _bmm_attention(vae)
        pieces = Pieces(
            resolution=resolution,
            unet_call_flops=_flops(lambda: unet_fwd(1)),
            unet_train_flops=_flops(lambda: unet_train(1)),
            vae_decode_flops=_flops(lambda: vae_fwd(1)),
            vae_train_flops=_flops(lambda: vae_fwd(1, True)),
            unet_params=unet_params,
            lora_params=lora_params,
            vae_params=sum(p.numel() for p in vae.parameters()),
            text_params=sum(p.numel() for p in text.parameters()),
            unet_nograd_peak=unet_nograd,
            unet_train_peak=unet_train_peak,
            unet_saved=saved,
            unet_input=sum(t.numel() * t.element_size() for t in inputs(1) if t is not None),
            vae_nograd_peak=vae_nograd,
            vae_train_peak=vae_train,
        )
    return pieces


def chain_bytes(p: Pieces, calls: int, checkpointed: bool) -> int:
    """Peak activation bytes per image of a chain of `calls` UNet calls with grad, then its backward.
    Checkpointed: every call keeps only its inputs; backward recomputes one call at a time (one call's train peak).
    Not checkpointed: the calls before the last keep their saved activations while the last runs forward+backward."""
    if checkpointed:
        return calls * p.unet_input + p.unet_train_peak
    return (calls - 1) * p.unet_saved + p.unet_train_peak


@functools.lru_cache(maxsize=8)
def _measured(model: str, resolution: int, dtype: str, lora_json: str) -> Pieces:
    from rollout.settings import LoraSettings

    return measure(model, resolution, getattr(torch, dtype), LoraSettings.model_validate_json(lora_json))


def _saved_bytes(unet: torch.nn.Module, inputs: Callable, batch: int) -> int:
    """Bytes of the tensors autograd keeps between one UNet forward with grad and its backward (weights excluded)."""
    from unittest import mock

    weights = {t.untyped_storage()._cdata for t in [*unet.parameters(), *unet.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            seen[storage._cdata] = storage.nbytes()
        return t

    x, t, e, w = inputs(batch, grad=True)
    with (
        mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        unet(x, t, e, timestep_cond=w)
    return sum(seen.values())


@functools.lru_cache(maxsize=8)
def reward_pieces(reward: str, dtype: str = "float32") -> tuple[int, int, int, int]:
    """(parameters, forward FLOPs, forward+backward FLOPs, train peak bytes) of a CLIP-based reward, per image."""
    if reward not in REWARD_BACKBONES:
        return 0, 0, 0, 0
    from transformers import CLIPConfig, CLIPModel

    from rewards_service.architectures import shipped_config

    with torch.device("meta"):
        torch_dtype = getattr(torch, dtype)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)
        try:
            clip = CLIPModel(CLIPConfig(**shipped_config(REWARD_BACKBONES[reward]))).eval().requires_grad_(False)
        finally:
            torch.set_default_dtype(previous)
        size = clip.config.vision_config.image_size
        params = sum(p.numel() for p in clip.parameters())

        def fwd(grad: bool):
            pixels = torch.randn(1, 3, size, size, dtype=torch_dtype, requires_grad=grad)
            ids = torch.zeros(1, 77, dtype=torch.long)
            out = clip(input_ids=ids, pixel_values=pixels)
            if grad:
                (out.image_embeds.float() * out.text_embeds.float()).sum().backward()

        with torch.no_grad():
            forward = _flops(lambda: fwd(False))
        train = _flops(lambda: fwd(True))
        peak = _peak(clip, lambda: fwd(True))
    return params, forward, train, peak


@functools.lru_cache(maxsize=1)
def llava_bertscore_params() -> tuple[int, int]:
    """Parameters of the full LLaVA-1.5-7B (all 32 layers) and of the DeBERTa-xlarge BERTScore encoder, counted on
    meta."""
    from transformers import DebertaConfig, DebertaModel, LlavaConfig, LlavaForConditionalGeneration

    from rewards_service.architectures import shipped_config

    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(LlavaConfig(**shipped_config("llava-hf/llava-1.5-7b-hf")))
        deberta = shipped_config("microsoft/deberta-xlarge-mnli")
        bert = DebertaModel(DebertaConfig(**{k: v for k, v in deberta.items() if k != "model_type"}))
    return sum(p.numel() for p in llava.parameters()), sum(p.numel() for p in bert.parameters())


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


def _actor(role: str, parts: dict[str, int], gpu: GPU, fraction: float) -> Actor:
    fraction = min(1.0, fraction or 1.0)  # 0: the preset leaves it to Ray; counted as a whole GPU
    return Actor(role, sum(parts.values()), int(gpu.memory_bytes * fraction) - RESERVED, fraction, parts)


@dataclass
class Assembly:
    """The actors of `config` on one GPU kind, and the figures the plan prints beside them."""

    actors: list[Actor]
    pieces: Pieces
    reward: tuple[int, int, int, int]
    per_sample: int
    gpus: float


def assemble(config: TrainConfig, gpu: GPU) -> Assembly:
    """Memory of every actor of `config` on `gpu` and the FLOPs of one trained sample (measured pieces are cached)."""
    s, r, algo = config.sampling, config.resources, config.algo
    resolution = s.height or 512
    dtype_name = "bfloat16" if config.model.dtype == "auto" else config.model.dtype
    p = _measured(config.model.name, resolution, dtype_name, config.model.lora.model_dump_json())
    base = (p.unet_params + p.vae_params + p.text_params) * DTYPE_BYTES[dtype_name]
    lora_state = p.lora_params * 4 * 4  # fp32 weights, grads, AdamW m and v
    H = s.num_steps
    sampler = POLICIES[algo.sampler]
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
    if algo.samples_from == "learners":  # first-order: the learner backpropagates through its own chains
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
        parts = {
            "base weights": base,
            "LoRA + grads + AdamW (fp32)": lora_state,
            "UNet forward+backward activations": t.train_batch_size * cfg * p.unet_train_peak,
        }
        trained = steps_trained(sampler.num_actions(H), getattr(t, "timestep_fraction", 1.0))
        per_sample = (
            cfg * (H * p.unet_call_flops + t.inner_epochs * trained * p.unet_train_flops) + p.vae_decode_flops + rw_fwd
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
    return Assembly(actors, p, rw, per_sample, gpus)


def plan(config: TrainConfig, gpu: str = "h100-80gb", mfu: float = 0.35) -> dict[str, Any]:
    """The plan of `config` on `gpu` (any spelling `cluster.gpus.resolve_gpu` reads) as a JSON-ready dict."""
    from cluster.plan_advice import advise

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
