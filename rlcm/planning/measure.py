"""The measured pieces of a plan: parameters, FLOPs (`FlopCounterMode`) and peak memory (`LiveBytes`) of one UNet
call, VAE decode and reward model, on fake tensors (no memory, no weights); `rlcm.planning.plan` says how they are
assembled."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
def cached_measure(model: str, resolution: int, dtype: str, lora_json: str) -> Pieces:
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
