"""Helpers shared by tests that work on the toy LCM: a policy with a saved, non-trivial LoRA."""

from __future__ import annotations

from pathlib import Path

import torch

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
