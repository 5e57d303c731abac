"""How fast a UNet runs, and the opt-in ways to make it faster (`model.compile`, `model.channels_last`, TF32).

`UNetMeter` counts the images that go through a UNet (a forward pre-hook) and reads the device's peak memory, for the
`perf_*` fields of the metrics rows. `speed_up` applies the model settings to a pipeline's UNet: channels-last
memory layout, and a regional `torch.compile` (each down, mid and up block compiled on its own: the blocks repeat,
so compile time stays a fraction of compiling the whole UNet, and the LoRA hooks outside the blocks stay eager).
`enable_tf32` lets float32 matmuls and convolutions use TF32 tensor cores on Ampere or newer GPUs.
"""

from __future__ import annotations

import torch


class UNetMeter:
    """Images through `unet` since the last `take()`, and (CUDA) the device's peak allocated memory since then."""

    def __init__(self, unet: torch.nn.Module):
        self.images = 0
        self.device = unet.device
        unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.images += (args[0] if args else kwargs["sample"]).shape[0]

    def take(self) -> dict[str, float]:
        """`unet_images` (and on a GPU `gpu_memory_peak_gb`) since the last call; the counters restart."""
        out: dict[str, float] = {"unet_images": self.images}
        self.images = 0
        if self.device.type == "cuda":
            out["gpu_memory_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        return out


def enable_tf32() -> bool:
    """TF32 for float32 matmuls and cuDNN convolutions on an Ampere-or-newer GPU (compute capability ≥ 8); returns
    whether it is on. No effect on CPU or on bf16/fp16 weights (their kernels do not use it)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def speed_up(unet: torch.nn.Module, compile: bool = False, channels_last: bool = False) -> torch.nn.Module:
    """`unet` in channels-last layout and/or with each of its blocks compiled (in place; returns it)."""
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile:
        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
            if block is not None:
                block.compile(dynamic=False)
    return unet
