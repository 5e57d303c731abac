"""Check `rlcm plan`'s activation memory against the measured peak on CPU, at small resolutions.

Measured: in a fresh process per resolution, the real SD1.5-layout UNet (random weights, bfloat16, rank-16 LoRA on
attention) runs, after one warm-up of each case, under `torch.profiler.profile(profile_memory=True)`: one call without
grad, one forward+backward, and a chain of 3 calls then backward, with and without gradient checkpointing
(`torch.utils.checkpoint`, non-reentrant, as the ROCM learner uses it). The profiler reports every allocation and free
of torch's CPU allocator with the running total of live bytes. Two figures come out of it:
- tensor peak: the highest total right after an op returns, i.e. every tensor alive between ops (activations, saved
  tensors, grads, outputs), with the scratch buffers that a kernel allocates and frees inside itself left out;
- allocator peak: the highest total at any moment, scratch included. On CPU the largest scratch is oneDNN's
  reordered copy of a bfloat16 convolution weight (59 MB for the 2560→1280 3×3 convolution at any resolution);
  a GPU's convolution workspace is its own and falls under the plan's reserved 1.5 GiB.
Predicted: `rlcm.planning.measure.measure` on meta tensors (no memory) and `rlcm.planning.measure.chain_bytes`, the
figures `rlcm plan` uses. The error compares the prediction with the tensor peak.

    .venv/bin/python benchmarks/validate_plan_memory.py [64 128 192]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MODES = ("nograd", "train", "chain3", "chain3-ckpt")

CHILD = r"""
import json, sys, torch
from bisect import bisect_right
from diffusers import UNet2DConditionModel
from torch.profiler import ProfilerActivity, profile
from torch.utils.checkpoint import checkpoint
from rollout.architectures import _config, architecture_dir
from rollout.lora import add_lora
from rollout.settings import LoraSettings

res, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
unet = UNet2DConditionModel.from_config(_config(architecture_dir("random:SimianLuo/LCM_Dreamshaper_v7"), "unet"))
unet = unet.to(torch.bfloat16).eval().requires_grad_(False)
add_lora(unet, LoraSettings(rank=16, alpha=32))
latent = res // 8
t, e, w = (
    torch.full((batch,), 500),
    torch.randn(batch, 77, 768, dtype=torch.bfloat16),
    torch.randn(batch, 256, dtype=torch.bfloat16),
)

def step(x):
    return unet(x, t, e, timestep_cond=w).sample

def call(mode):
    x = torch.randn(batch, 4, latent, latent, dtype=torch.bfloat16, requires_grad=mode != "nograd")
    if mode == "nograd":
        with torch.no_grad():
            step(x)
        return
    for _ in range(1 if mode == "train" else 3):
        x = checkpoint(step, x, use_reentrant=False) if mode.endswith("ckpt") else step(x)
    x.float().square().mean().backward()
    for p in unet.parameters():
        p.grad = None

def peaks(prof):
    allocs, ends = [], []
    def walk(event):
        fields = event.extra_fields
        if isinstance(fields, torch._C._profiler._ExtraFields_Allocation):
            allocs.append((event.start_time_ns, fields.total_allocated, fields.alloc_size))
        else:
            ends.append(event.end_time_ns)
        for child in event.children:
            walk(child)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    allocs.sort()
    base = allocs[0][1] - allocs[0][2]  # live bytes before the first allocation of this session
    times = [a[0] for a in allocs]
    after_ops = [allocs[i - 1][1] for i in (bisect_right(times, end) for end in ends) if i]
    return max(after_ops) - base, max(a[1] for a in allocs) - base

out = {}
for mode in sys.argv[3:]:
    call(mode)  # warm-up: one-time allocations (kernel caches, lazy imports) are not activations
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call(mode)
    out[mode] = peaks(prof)
print(json.dumps(out))
"""


def predicted(resolution: int, batch: int) -> dict[str, int]:
    import torch

    from rlcm.planning.measure import chain_bytes, measure
    from rollout.settings import LoraSettings

    p = measure(
        "SimianLuo/LCM_Dreamshaper_v7", resolution, torch.bfloat16, LoraSettings(rank=16, alpha=32), batch=batch
    )
    # checkpointed, the earlier calls are recomputed and backpropagated while the LoRA grads (fp32) that the later
    # calls accumulated are alive; `rlcm plan` counts those grads in its "LoRA + grads + AdamW" part
    lora_grads = p.lora_params * 4
    return {
        "nograd": p.unet_nograd_peak * batch,
        "train": p.unet_train_peak * batch,
        "chain3": chain_bytes(p, 3, False) * batch,
        "chain3-ckpt": chain_bytes(p, 3, True) * batch + lora_grads,
    }


def measured(resolution: int, batch: int, modes=MODES) -> dict[str, tuple[int, int]]:
    """{mode: (tensor peak, allocator peak)} in bytes, from a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(resolution), str(batch), *modes],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    if out.returncode:
        raise SystemExit(f"measuring at {resolution} px failed:\n{out.stderr[-2000:]}")
    return {k: tuple(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main(resolutions: list[int], batch: int = 1, modes=MODES) -> list[dict]:
    rows = []
    for res in resolutions:
        pred, meas = predicted(res, batch), measured(res, batch, modes)
        for mode in modes:
            tensors, allocator = meas[mode]
            row = {
                "resolution": res,
                "mode": mode,
                "predicted_mb": pred[mode] / 1e6,
                "measured_mb": tensors / 1e6,
                "allocator_peak_mb": allocator / 1e6,
                "error": pred[mode] / tensors - 1,
            }
            rows.append(row)
            print(
                f"{res:4d} px  {mode:11s} predicted {row['predicted_mb']:8.1f} MB  measured {row['measured_mb']:8.1f} "
                f"MB  error {100 * row['error']:+5.1f}%   (allocator peak incl. kernel scratch "
                f"{row['allocator_peak_mb']:8.1f} MB)",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [64, 128, 192])
