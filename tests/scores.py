"""Rewards in the steering `Score` form (uint8 images [B, H, W, 3] and prompts in, B rewards out) for the steering
tests, and the NHWC view of a sampler's images they score."""

from __future__ import annotations

import numpy as np
import torch

from rewards_service.scorers.jpeg import JpegCompressibility


def jpeg(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    return np.asarray(JpegCompressibility().score(images, prompts).rewards)


def brightness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """A reward without ties: the mean pixel value."""
    return images.astype(np.float64).mean(axis=(1, 2, 3))


def nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()
