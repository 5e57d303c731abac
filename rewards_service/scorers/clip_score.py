"""CLIP score, differentiable in the pixels: scale · cos(CLIP image embedding, CLIP text embedding).

Convention: the raw cosine (scale 1, ≈ 0.25–0.27 for SD images and their prompts), as ROCM's CLIP column
prints it. `scale=100` gives the percentage-style number of torchmetrics' CLIPScore, which also clamps:
100 · max(cos, 0); the two agree whenever the cosine is positive (natural images and captions under a real
CLIP), and the plain cosine keeps its gradient where the clamp would zero it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rewards_service.scorers.clip_common import CLIP_MEAN, CLIP_STD, clip_preprocess, load_pretrained

DEFAULT_CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"
MAX_TEXT_TOKENS = 77


def clip_input_size(image_processor: Any, image_size: int) -> int:
    """The square input size of a CLIP image processor, after checking `clip_preprocess` reproduces the processor."""
    short, crop = image_processor.size.get("shortest_edge"), image_processor.crop_size
    same_layout = (
        image_processor.do_resize
        and image_processor.do_center_crop
        and short == crop.get("height") == crop.get("width")
    )
    same_values = (
        image_processor.do_rescale
        and abs(image_processor.rescale_factor - 1 / 255) < 1e-9
        and image_processor.do_normalize
        and torch.allclose(
            torch.tensor(image_processor.image_mean, dtype=torch.float64), torch.tensor(CLIP_MEAN, dtype=torch.float64)
        )
        and torch.allclose(
            torch.tensor(image_processor.image_std, dtype=torch.float64), torch.tensor(CLIP_STD, dtype=torch.float64)
        )
    )
    if not (same_layout and same_values):
        raise ValueError(
            f"image processor {type(image_processor).__name__} (size {image_processor.size}, crop {crop}, mean "
            f"{image_processor.image_mean}) is not CLIP's: the differentiable preprocessing reproduces resize shortest "
            "edge = crop size, center crop, x/255, CLIP mean/std; use a CLIP processor"
        )
    if short != image_size:
        raise ValueError(
            f"image processor crops to {short} px but the CLIP vision tower takes {image_size} px; pair the model "
            "with its processor"
        )
    return short


class ClipSimilarity(nn.Module):
    """cos(CLIP image embedding, CLIP text embedding) per (image, prompt) pair; images float [B, 3, H, W] in [0, 1]."""

    def __init__(self, clip: nn.Module, tokenizer: Any, image_size: int) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_length = min(MAX_TEXT_TOKENS, clip.config.text_config.max_position_embeddings)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str] | None) -> torch.Tensor:
        if prompts is None or len(prompts) != images.shape[0]:
            got = "no" if prompts is None else len(prompts)
            raise ValueError(
                f"{type(self).__name__} needs one prompt per image: got {images.shape[0]} images and {got} prompts"
            )
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        pixels = clip_preprocess(images.float(), self.image_size).to(self.clip.dtype)
        out = self.clip(
            input_ids=tokens.input_ids.to(images.device),
            attention_mask=tokens.attention_mask.to(images.device),
            pixel_values=pixels,
        )
        # CLIPModel returns L2-normalized embeddings: cos = <e_image, e_text>
        return (out.image_embeds.float() * out.text_embeds.float()).sum(dim=-1)

    @staticmethod
    def load(model: str, processor: str | None, dtype: str) -> tuple[nn.Module, Any, int]:
        """CLIPModel, tokenizer and input size from hub ids or local folders (`processor` defaults to `model`)."""
        from transformers import AutoProcessor, CLIPModel

        clip = load_pretrained(CLIPModel.from_pretrained, model, "model", dtype=getattr(torch, dtype))
        loaded = load_pretrained(
            AutoProcessor.from_pretrained, processor or model, "processor" if processor else "model"
        )
        size = clip_input_size(loaded.image_processor, clip.config.vision_config.image_size)
        return clip.eval().requires_grad_(False), loaded.tokenizer, size


class ClipScore(ClipSimilarity):
    """CLIP score = scale · cos(image, prompt), scale 1 by default (see the module docstring for the convention)."""

    scale: float = 1.0

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.scale * self.cosine(images, prompts)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_CLIP_SCORE_MODEL,
        processor: str | None = None,
        scale: float = 1.0,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> ClipScore:
        scorer = cls(*cls.load(model, processor, dtype))
        scorer.scale = float(scale)
        return scorer.to(device)
