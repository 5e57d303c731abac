"""What the CLIP-based scorers share: OpenAI CLIP's normalization, its differentiable preprocessing, weight loading."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable CLIP preprocessing of float images in [0, 1], [B, 3, H, W]: resize, center crop, normalize."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    images = nn.functional.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[..., top : top + size, left : left + size]
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def load_pretrained(loader: Callable[..., Any], path_or_id: str, option: str, **kwargs: Any) -> Any:
    """`loader(path_or_id)` (a `from_pretrained`), turning "not found" into a FileNotFoundError that says what to do.

    `random:<hub id>` builds that model's architecture with random weights (rewards_service.architectures)."""
    from rewards_service.architectures import is_random, random_pretrained

    if is_random(path_or_id):
        return random_pretrained(loader, path_or_id, **kwargs)
    try:
        return loader(path_or_id, **kwargs)
    except OSError as exc:
        if os.path.exists(os.path.expanduser(path_or_id)):
            where = "the local folder does not hold loadable weights"
        elif os.path.isabs(path_or_id) or path_or_id.startswith((".", "~")) or path_or_id.count("/") > 1:
            where = "there is no such local folder"
        else:
            where = "it is not in the Hugging Face cache and the hub cannot be reached"
        raise FileNotFoundError(
            f"cannot load {path_or_id!r} ({where}): put the weights in the Hugging Face cache "
            f"(`hf download {path_or_id}` where the hub is reachable, then copy ~/.cache/huggingface) "
            f"or pass a local folder with the option {option}=/path/to/folder. Cause: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
