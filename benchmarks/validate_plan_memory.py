"""Check `rlcm plan`'s activation memory against a measured peak on CPU, at small resolutions.

Measured: in a fresh process per case, the real SD1.5-layout UNet (random weights, bfloat16, rank-16 LoRA on
attention) runs one forward (no grad) or one forward+backward; the peak is the process's resident-set high-water
mark (VmHWM, reset through /proc/self/clear_refs just before the call) minus the resident set before it, after one warm-up call (one-time allocations are not activations). glibc
serves large blocks with mmap and returns them on free, so the resident set follows live tensors.
Predicted: `cluster.plan.measure` on meta tensors (no memory), the figure `rlcm plan` uses.

    .venv/bin/python benchmarks/validate_plan_memory.py [64 96 128]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import ctypes, json, sys, torch
from pathlib import Path
from rollout.architectures import build_random_pipeline
from rollout.lora import add_lora
from rollout.settings import LoraSettings

res, mode, batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
unet = build_random_pipeline("random:SimianLuo/LCM_Dreamshaper_v7", dtype=torch.bfloat16).unet.eval()
add_lora(unet, LoraSettings(rank=16, alpha=32))
latent = res // 8
x = torch.randn(batch, 4, latent, latent, dtype=torch.bfloat16, requires_grad=mode == "train")
t, e, w = torch.full((batch,), 500), torch.randn(batch, 77, 768, dtype=torch.bfloat16), torch.randn(batch, 256, dtype=torch.bfloat16)

def status(key):
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))

def call():
    if mode == "train":
        unet(x, t, e, timestep_cond=w).sample.float().square().mean().backward()
        x.grad = None
        for p in unet.parameters():
            p.grad = None
    else:
        with torch.no_grad():
            unet(x, t, e, timestep_cond=w)

call()  # warm-up: one-time allocations (kernel caches, lazy imports) are not activations
ctypes.CDLL("libc.so.6").malloc_trim(0)
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
call()
print(json.dumps({"measured": status("VmHWM") - before}))
"""


def predicted(resolution: int, batch: int) -> dict[str, int]:
    import torch

    from cluster.plan import measure
    from rollout.settings import LoraSettings

    p = measure("SimianLuo/LCM_Dreamshaper_v7", resolution, torch.bfloat16, LoraSettings(rank=16, alpha=32), batch=batch)
    return {"nograd": p.unet_nograd_peak * batch, "train": p.unet_train_peak * batch}


def main(resolutions: list[int], batch: int = 1) -> list[dict]:
    rows = []
    for res in resolutions:
        pred = predicted(res, batch)
        for mode in ("nograd", "train"):
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # blocks >= 64 KiB mmap'd: freed memory leaves the resident set at once
            out = subprocess.run([sys.executable, "-c", CHILD, str(res), mode, str(batch)], capture_output=True, text=True, check=True, env=env)
            measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
            rows.append({"resolution": res, "mode": mode, "predicted_mb": pred[mode] / 1e6, "measured_mb": measured / 1e6,
                         "error": pred[mode] / measured - 1})
            print(f"{res:4d} px  {mode:7s} predicted {pred[mode] / 1e6:8.1f} MB  measured {measured / 1e6:8.1f} MB  "
                  f"error {100 * (pred[mode] / measured - 1):+.1f}%", flush=True)
    return rows


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [64, 96, 128])
