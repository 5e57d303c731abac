"""Helpers shared by tests that work on the toy models: a policy with a saved LoRA, `rlcm train` runs and what they
wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from rlcm.commands.main import main
from rollout.lora import LoraSettings, add_lora, save_lora
from rollout.models import load_pipeline

TOY_LORA = LoraSettings(rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv_out"])


def toy_pipe_with_saved_lora(directory: Path):
    """The toy pipeline with a LoRA whose B matrices are random (so it changes images), saved to `directory`."""
    pipe = load_pipeline("tiny")
    add_lora(pipe.unet, TOY_LORA)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    save_lora(directory, pipe.unet, TOY_LORA)
    return pipe


FAST = [
    "run.sample_grid_every=100",
    "run.save_every=100",
    "scaleout.control_poll_s=0.1",
    "run.plots=false",
    "run.tensorboard=false",
]


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_cli(preset: str, tmp_path: Path, name: str, *sets: str, resume: bool = False) -> int:
    """`rlcm train --config preset` into tmp_path/name with FAST and `sets` as --set options; its exit code."""
    args = [
        "train",
        "--config",
        preset,
        "--output-dir",
        str(tmp_path / name),
        *[a for s in [*FAST, *sets] for a in ("--set", s)],
    ]
    return main(args + (["--resume"] if resume else []))


def assert_same_lora(run_a: Path, run_b: Path, checkpoint: str = "epoch-0001") -> None:
    """The two runs' saved adapters at `checkpoint` are bitwise equal."""
    a = load_file(run_a / "checkpoints" / checkpoint / "pytorch_lora_weights.safetensors")
    b = load_file(run_b / "checkpoints" / checkpoint / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def lora_changes_stock_images(pipe, checkpoint: Path, **call) -> bool:
    """Whether a stock diffusers pipeline's image for "a cat" changes once it loads the saved LoRA."""
    base = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    pipe.load_lora_weights(str(checkpoint))
    tuned = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    return not np.allclose(base, tuned)
