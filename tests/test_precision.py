"""The precision policy (rollout/precision.py): who runs in which dtype, and a bf16 ROCM update at full SD1.5 size."""

from __future__ import annotations

import time

import pytest
import torch

from learner.algorithms.rocm.objective import rocm_objective
from learner.algorithms.rocm.settings import ROCMSettings
from learner.optim import build_optimizer
from rewards_service.registry import build_differentiable_reward
from rollout.lora import LoraSettings, add_lora
from rollout.models import load_pipeline
from rollout.precision import Precision, dtypes_for, math_dtype_for

ATTENTION_LORA = LoraSettings(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def test_dtypes_for_names_devices_and_errors():
    assert dtypes_for("auto", "cpu") == Precision(base=torch.float32, adapter=torch.float32, math=torch.float32)
    assert dtypes_for(None, "cpu").base == torch.float32
    assert dtypes_for("bfloat16", "cpu") == Precision(base=torch.bfloat16)
    assert dtypes_for(torch.float16, "cpu").base == torch.float16
    assert (
        math_dtype_for(torch.bfloat16, torch.float16) == torch.float32
        and math_dtype_for(torch.float64) == torch.float64
    )
    with pytest.raises(ValueError, match="unknown dtype 'bf16'"):
        dtypes_for("bf16", "cpu")


def test_bf16_base_keeps_adapter_and_adam_state_in_fp32():
    pipe = load_pipeline("tiny", device="cpu", dtype=torch.bfloat16)
    params = add_lora(pipe.unet, ATTENTION_LORA)
    frozen = [p for p in pipe.unet.parameters() if not p.requires_grad]
    assert {p.dtype for p in params} == {torch.float32} and {p.dtype for p in frozen} == {torch.bfloat16}
    assert pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    optimizer = build_optimizer(params, ROCMSettings())
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert {s.dtype for state in optimizer.state.values() for s in state.values() if s.dim()} == {torch.float32}


def lora_gradient(pipe, params) -> tuple[torch.Tensor, float]:
    """The flattened LoRA gradient of the mean ROCM objective (H = 2, 64 px, KL, λ 0.1) on fixed noise, and the
    objective."""
    for p in params:
        p.grad = None
    out = rocm_objective(
        pipe,
        ["a photo of a cat"],
        2,
        8.0,
        torch.Generator().manual_seed(0),
        build_differentiable_reward("smoothness"),
        "kl",
        0.1,
        height=64,
        width=64,
        gradient_checkpointing=False,
    )
    out["objective"].mean().backward()
    return torch.cat([p.grad.flatten() for p in params]), float(out["objective"].detach().mean())


@pytest.mark.slow
def test_bf16_rocm_update_at_full_sd15_size_matches_fp32():
    """Random SD1.5-architecture LCM (seed 0), attention LoRA with non-zero B: the bf16 base gives a finite objective
    and a LoRA gradient with cosine >= 0.99 to the fp32 base's, same weights and noise (figure in docs/precision.md).
    Slow: a 0.86 B-parameter UNet forward and backward on CPU, twice (about 3 min on 2 shared cores)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    pipe = load_pipeline("random:SimianLuo/LCM_Dreamshaper_v7", device="cpu", dtype=torch.float32)
    params = add_lora(pipe.unet, ATTENTION_LORA)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    adapter = [p.detach().clone() for p in params]
    grad32, objective32 = lora_gradient(pipe, params)
    for component in (pipe.unet, pipe.vae, pipe.text_encoder):
        component.to(torch.bfloat16)
    with torch.no_grad():
        for p, saved in zip(params, adapter):
            p.data = saved.clone()  # the fp32 adapter the policy keeps (precision.TRAINABLE_DTYPE)
    grad16, objective16 = lora_gradient(pipe, params)
    cosine = float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0))
    print(
        f"\nbf16 vs fp32 at SD1.5 size, 64 px, H=2: objective {objective16:.6f} vs {objective32:.6f}, LoRA gradient "
        f"cosine {cosine:.5f}, |g| {grad16.norm():.4g} vs {grad32.norm():.4g} ({time.perf_counter() - start:.0f} s)"
    )
    assert torch.isfinite(grad16).all() and grad16.norm() > 0 and abs(objective16) < float("inf")
    assert cosine >= 0.99
