"""The GPU kinds `rlcm plan` knows (memory, dense bf16 peak FLOP/s, the names people write for them) and the GPU
share a reward deployment asks in the shipped Serve configs."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import yaml

from rlcm.config.schema import ConfigError


@dataclass(frozen=True)
class GPU:
    kind: str  # canonical name, e.g. a100-80gb
    model: str  # what people call it, e.g. A100
    memory_bytes: int  # nominal memory, GiB as the vendor's GB figure
    bf16_flops: float  # dense bf16 tensor peak (FP32 accumulate), no sparsity, vendor data sheet


GPUS = {
    g.kind: g
    for g in (
        GPU(
            "a10g-24gb", "A10G", 24 * 2**30, 70e12
        ),  # AWS-only A10 variant; no NVIDIA data sheet: the figure AWS partners quote
        GPU("l4-24gb", "L4", 24 * 2**30, 121e12),
        GPU("rtx4090-24gb", "RTX 4090", 24 * 2**30, 165.2e12),  # Ada whitepaper, BF16 with FP32 accumulate
        GPU("a6000-48gb", "RTX A6000", 48 * 2**30, 154.8e12),
        GPU("l40s-48gb", "L40S", 48 * 2**30, 362e12),
        GPU("a100-40gb", "A100", 40 * 2**30, 312e12),
        GPU("a100-80gb", "A100", 80 * 2**30, 312e12),
        GPU("h100-80gb", "H100", 80 * 2**30, 989e12),  # SXM (PCIe: 756 TFLOP/s)
        GPU("h200-141gb", "H200", 141 * 2**30, 989e12),
        GPU(
            "b200-180gb", "B200", 180 * 2**30, 2250e12
        ),  # HGX B200 data sheet: 1.44 TB and 36 PFLOP/s sparse over 8 GPUs
    )
}
DEFAULT_VARIANT = {"A100": "a100-80gb"}  # a model name with several memory sizes means this one


def _squash(name: str) -> str:
    """Lower case, no spaces or punctuation, without vendor words: 'NVIDIA RTX A6000' -> 'a6000'."""
    return re.sub(r"nvidia|geforce|tesla|rtx|[^a-z0-9]", "", name.lower())


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for g in GPUS.values():
        model, gb = _squash(g.model), g.kind.rsplit("-", 1)[1].removesuffix("gb")
        out.update({_squash(g.kind): g.kind, model + gb: g.kind, model + gb + "g": g.kind})
        variants = [k for k in GPUS.values() if k.model == g.model]
        if len(variants) == 1 or DEFAULT_VARIANT.get(g.model) == g.kind:
            out[model] = g.kind
    return out


def resolve_gpu(name: str) -> tuple[GPU, str | None]:
    """The GPU `name` means (H100, h100, a100-40gb, "RTX 4090", rtx4090 ...) and a note when it picked a variant."""
    kind = _aliases().get(_squash(name))
    if kind is None:
        known = ", ".join(f"{g.kind} ({g.model})" for g in GPUS.values())
        raise ConfigError(f"--gpu: unknown GPU kind {name!r}; known: {known}")
    gpu = GPUS[kind]
    others = [g.kind for g in GPUS.values() if g.model == gpu.model and g.kind != kind]
    note = (
        f"{name} read as {kind} (also: {', '.join(others)})" if others and _squash(name) == _squash(gpu.model) else None
    )
    return gpu, note


@functools.lru_cache(maxsize=8)
def serve_share(reward: str) -> tuple[float, int, str]:
    """(GPUs per replica, replicas, where it says so) of `reward`'s deployment in the shipped Serve configs."""
    folder = resources.files("cluster") / "serve"
    for path in sorted(folder.iterdir(), key=lambda f: f.name):
        if path.name.endswith(".yaml"):
            for app in (yaml.safe_load(path.read_text()) or {}).get("applications", []):
                for entry in app.get("args", {}).get("rewards", []):
                    if entry.get("name") == reward:
                        return (
                            float(entry.get("num_gpus", 0.0)),
                            int(entry.get("num_replicas", 1)),
                            f"cluster/serve/{path.name}",
                        )
    return 1.0, 1, "no shipped Serve config names it: one GPU assumed"
