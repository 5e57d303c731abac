"""Differentiable rewards for first-order training (ROCM): torch modules, float images in [0, 1] in, a score per
image out.

Every module here has `forward(images, prompts) -> [B]` with `images` float [B, 3, H, W] in [0, 1]
and gradients flowing back to the pixels. The same modules are served for monitoring (no grad)
through `DifferentiableScorer`, so the number the learner climbs is the number the service reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rewards_service.scorers.base import ScoreResult, check_batch


class Smoothness(nn.Module):
    """r = −scale · mean |∇image| (anisotropic total variation): a differentiable stand-in for JPEG compressibility.

    Smooth images compress well; on the toy model this is the reward ROCM and RLCM are compared on.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        return -self.scale * (dx + dy)


def smoothness_module(**options: Any) -> nn.Module:
    return Smoothness(**options)


def aesthetic_module(
    clip_model: str | None = None, head_path: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> nn.Module:
    from rewards_service.scorers.aesthetic import DEFAULT_CLIP, AestheticModel

    model = AestheticModel.from_pretrained(clip_model or DEFAULT_CLIP, head_path, getattr(torch, dtype), device)
    return PromptFree(model)


def clip_score_module(**options: Any) -> nn.Module:
    from rewards_service.scorers.clip_score import ClipScore

    return ClipScore.from_pretrained(**options)


def pickscore_module(**options: Any) -> nn.Module:
    from rewards_service.scorers.pickscore import PickScore

    return PickScore.from_pretrained(**options)


def hpsv2_module(**options: Any) -> nn.Module:
    from rewards_service.scorers.hpsv2 import HPSv2

    return HPSv2.from_pretrained(**options)


def blip_score_module(**options: Any) -> nn.Module:
    from rewards_service.scorers.blip_score import BlipScore

    return BlipScore.from_pretrained(**options)


def image_reward_module(**options: Any) -> nn.Module:
    from rewards_service.scorers.image_reward import ImageRewardModel

    return ImageRewardModel.from_pretrained(**options)


class PromptFree(nn.Module):
    """Adapts an image-only module `f(images) -> [B]` to the `(images, prompts)` signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.model(images)


class DifferentiableScorer:
    """Serves a differentiable reward on the non-differentiable path: uint8 [B, H, W, 3] in, floats out.

    `model` is the reward's frozen module (`rewards_service.registry.build_differentiable_reward(name)`)."""

    def __init__(self, name: str, model: nn.Module, version: str = "1", device: str | None = None) -> None:
        self.name, self.version = name, version
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)

    @torch.no_grad()
    def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        check_batch(images, prompts)
        pixels = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        scores = self.model(pixels, list(prompts)).float().cpu().tolist()
        return ScoreResult(rewards=[float(s) for s in scores], version=self.version)
