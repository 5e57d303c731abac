"""BLIP score, differentiable in the pixels: BLIP image–text matching of an image and its prompt.

Two heads of `transformers.BlipForImageTextRetrieval`:
- `itc` (default): cos(vision_proj(image [CLS]), text_proj(text [CLS])), the raw cosine of BLIP's contrastive
  embeddings — what ImageReward's `BLIPScore` (the "BLIP" metric of the reward-model papers) computes, ≈ 0.3–0.5
  for matching pairs. We read the paper's BLIP column as this number.
- `itm`: P(match) = softmax(itm_head(text [CLS] cross-attending to the image))[1], in [0, 1].
Preprocessing as BlipImageProcessor: resize to size × size (bicubic), x/255, OpenAI CLIP mean/std; text padded to
35 tokens and truncated, as ImageReward's BLIPScore tokenizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from rewards_service.scorers.clip_common import CLIP_MEAN, CLIP_STD, load_pretrained

DEFAULT_BLIP_MODEL = "Salesforce/blip-itm-large-coco"
MAX_TEXT_TOKENS = 35


def blip_preprocess(
    images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Differentiable BlipImageProcessor: float [B, 3, H, W] in [0, 1] -> resized to size × size, normalized."""
    images = nn.functional.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return (images - images.new_tensor(mean).view(1, 3, 1, 1)) / images.new_tensor(std).view(1, 3, 1, 1)


def check_prompts(module: nn.Module, images: torch.Tensor, prompts: Sequence[str] | None) -> list[str]:
    if prompts is None or len(prompts) != images.shape[0]:
        got = "no" if prompts is None else len(prompts)
        raise ValueError(
            f"{type(module).__name__} needs one prompt per image: got {images.shape[0]} images and {got} prompts"
        )
    return list(prompts)


class BlipScore(nn.Module):
    """BLIP score per (image, prompt) pair; images float [B, 3, H, W] in [0, 1]."""

    def __init__(
        self,
        blip: nn.Module,
        tokenizer: Any,
        image_size: int,
        head: Literal["itc", "itm"] = "itc",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        if head not in ("itc", "itm"):
            raise ValueError(f"BLIP score head must be 'itc' (cosine) or 'itm' (match probability), got {head!r}")
        self.blip, self.tokenizer, self.image_size, self.head = blip, tokenizer, image_size, head
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = check_prompts(self, images, prompts)
        device = images.device
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        )
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        pixels = blip_preprocess(images.float(), self.image_size, self.mean, self.std).to(self.blip.dtype)
        image_embeds = self.blip.vision_model(pixel_values=pixels).last_hidden_state
        if self.head == "itm":
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
            text = self.blip.text_encoder(
                input_ids=ids,
                attention_mask=mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
            )
            return self.blip.itm_head(text.last_hidden_state[:, 0, :]).float().softmax(dim=-1)[:, 1]
        text = self.blip.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        image_feat = nn.functional.normalize(self.blip.vision_proj(image_embeds[:, 0, :]).float(), dim=-1)
        text_feat = nn.functional.normalize(self.blip.text_proj(text[:, 0, :]).float(), dim=-1)
        return (image_feat * text_feat).sum(dim=-1)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_BLIP_MODEL,
        processor: str | None = None,
        head: str = "itc",
        dtype: str = "float32",
        device: str = "cpu",
    ) -> BlipScore:
        """A BlipForImageTextRetrieval and its processor from hub ids (HF cache) or local folders."""
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        blip = load_pretrained(BlipForImageTextRetrieval.from_pretrained, model, "model", dtype=getattr(torch, dtype))
        loaded = load_pretrained(
            AutoProcessor.from_pretrained, processor or model, "processor" if processor else "model"
        )
        image_processor = loaded.image_processor
        size = image_processor.size
        if size.get("height") != size.get("width") or size.get("height") != blip.config.vision_config.image_size:
            raise ValueError(
                f"image processor size {size} does not match the BLIP vision tower's "
                f"{blip.config.vision_config.image_size} px square input"
            )
        return cls(
            blip.eval().requires_grad_(False),
            loaded.tokenizer,
            size["height"],
            head,
            image_processor.image_mean,
            image_processor.image_std,
        ).to(device)
