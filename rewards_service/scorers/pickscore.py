"""PickScore (Kirstain et al., 2023), differentiable in the pixels: exp(logit_scale) · cos(image, prompt).

A CLIP-H/14 fine-tuned on Pick-a-Pic preferences, used with the processor of the CLIP it started from
(resize 224 + center crop + CLIP normalization; tokens padded to 77, truncated), as in PickScore's README.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewards_service.scorers.clip_score import ClipSimilarity

DEFAULT_PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(ClipSimilarity):
    """PickScore = exp(logit_scale) · cos(image, prompt), the learned CLIP temperature (≈ 100) times the cosine."""

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.clip.logit_scale.float().exp() * self.cosine(images, prompts)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_PICKSCORE_MODEL,
        processor: str = DEFAULT_PICKSCORE_PROCESSOR,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> PickScore:
        return cls(*cls.load(model, processor, dtype)).to(device)
