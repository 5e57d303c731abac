"""The precision policy, decided here and nowhere else (docs/precision.md).

    frozen base (UNet, VAE, text encoder)   model.dtype ("auto": bf16 on a GPU that has it, else fp16; fp32 on CPU)
    LoRA weights, their gradients            fp32 (AdamW's moments follow the parameters: fp32)
    scheduler math, log π, divergences       fp32 (fp64 when an input is fp64: exact gradient checks)
    each reward model                        its scorer's `dtype` option (reward.options.dtype), default fp32:
                                             decided per scorer in rewards_service (it imports nothing of rollout)

The base runs each call in its dtype; what it returns is promoted to the math dtype before any sum, so
half precision costs rounding inside the network calls only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""`model.dtype`: config names → torch dtypes (None: decided by `dtypes_for`)."""
TRAINABLE_DTYPE = torch.float32
MATH_DTYPE = torch.float32


@dataclass(frozen=True)
class Precision:
    """Which dtype each part of a policy runs in."""

    base: torch.dtype  # frozen UNet, VAE and text encoder
    adapter: torch.dtype = TRAINABLE_DTYPE  # LoRA weights, gradients and AdamW state
    math: torch.dtype = MATH_DTYPE  # scheduler arithmetic, log-probs, divergences, rewards after scoring


def auto_base_dtype(device: torch.device) -> torch.dtype:
    """Half precision for the frozen base on GPU (bf16 where supported), fp32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtypes_for(model_dtype: str | torch.dtype | None, device: str | torch.device) -> Precision:
    """The policy's precision for `model.dtype` (a config name, a torch dtype, or None/"auto") on `device`."""
    if isinstance(model_dtype, str) and model_dtype not in DTYPES:
        raise ValueError(f"unknown dtype {model_dtype!r}; use one of {list(DTYPES)}")
    base = DTYPES[model_dtype] if isinstance(model_dtype, str) else model_dtype
    return Precision(base=base or auto_base_dtype(torch.device(device)))


def math_dtype_for(*dtypes: torch.dtype) -> torch.dtype:
    """fp32 for fp32/fp16/bf16 inputs (the contract); fp64 when an input is fp64 (exact gradient checks)."""
    out = MATH_DTYPE
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out
