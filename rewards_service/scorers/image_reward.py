"""ImageReward (Xu et al., 2023), differentiable in the pixels, loading THUDM's published `ImageReward.pt`.

Architecture (THUDM/ImageReward, ImageReward/ImageReward.py):
    image_embeds = BLIP ViT-L/16 (224 px, 24 blocks, width 1024, LayerNorm eps 1e-6)(preprocessed image)
    h            = BERT-base text encoder (12 layers, width 768, cross-attention to image_embeds)(prompt)[CLS]
    score        = (MLP(h) − 0.16717362830052426) / 1.0333394966054072
    MLP          = Linear 768→1024, Dropout, →128, Dropout, →64, Dropout, →16, →1 (no activations;
                   keys layers.{0,2,4,6,7}, as the LAION aesthetic head)
Preprocessing: resize shortest edge 224 (bicubic) + center crop + OpenAI CLIP mean/std (`clip_preprocess`);
prompt tokenized by BLIP's BERT tokenizer (bert-base-uncased + [DEC], [ENC]), padded to 35 tokens.

The modules are transformers' `BlipVisionModel` and `BlipTextModel`; `convert_checkpoint` renames the original
BLIP key layout of `ImageReward.pt` (blip.visual_encoder.blocks.N.attn.qkv …) to theirs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewards_service.scorers.blip_score import check_prompts
from rewards_service.scorers.clip_common import clip_preprocess

DEFAULT_IMAGE_REWARD_CHECKPOINT = "THUDM/ImageReward"
IMAGE_REWARD_FILE = "ImageReward.pt"
DEFAULT_TOKENIZER = "bert-base-uncased"
SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
MAX_TEXT_TOKENS = 35

# ImageReward's med_config.json (BLIP's) with encoder_width = the ViT-L width
VISION_CONFIG = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
)
TEXT_CONFIG = dict(
    vocab_size=30524,
    hidden_size=768,
    encoder_hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

_VISION_RENAMES = (  # original BLIP ViT -> transformers BlipVisionModel (as transformers' BLIP conversion script)
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)


def image_reward_mlp(input_size: int = 768) -> nn.Sequential:
    """ImageReward's head: keys layers.{0,2,4,6,7} of the published checkpoint (dropouts at 1, 3, 5)."""
    return nn.Sequential(
        nn.Linear(input_size, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class ImageRewardModel(nn.Module):
    """score(image, prompt) = (MLP(text [CLS] cross-attending to the BLIP image tokens) − mean) / std."""

    def __init__(
        self, vision_config: dict | None = None, text_config: dict | None = None, tokenizer: Any = None
    ) -> None:
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        vision = BlipVisionConfig(**(vision_config or VISION_CONFIG))
        text = BlipTextConfig(
            **{**(text_config or TEXT_CONFIG), "encoder_hidden_size": vision.hidden_size, "is_decoder": True}
        )
        self.visual_encoder = BlipVisionModel(vision)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        self.mlp = nn.Module()
        self.mlp.layers = image_reward_mlp(text.hidden_size)
        self.tokenizer = tokenizer
        self.image_size = vision.image_size

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = check_prompts(self, images, prompts)
        if self.tokenizer is None:
            raise ValueError(
                "ImageRewardModel has no tokenizer; build it with ImageRewardModel.from_pretrained or pass tokenizer="
            )
        device, dtype = images.device, self.visual_encoder.dtype
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        )
        image_embeds = self.visual_encoder(
            pixel_values=clip_preprocess(images.float(), self.image_size).to(dtype)
        ).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
        text = self.text_encoder(
            input_ids=tokens.input_ids.to(device),
            attention_mask=tokens.attention_mask.to(device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return ((self.mlp.layers(text[:, 0, :].float()) - SCORE_MEAN) / SCORE_STD).squeeze(-1)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str = DEFAULT_IMAGE_REWARD_CHECKPOINT,
        tokenizer: str = DEFAULT_TOKENIZER,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> ImageRewardModel:
        """The published model: `checkpoint` is a local ImageReward.pt or the hub repo holding it (HF cache only)."""
        path = resolve_file(checkpoint, IMAGE_REWARD_FILE, "checkpoint", "the ImageReward checkpoint")
        model = cls(tokenizer=blip_tokenizer(tokenizer))
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(convert_checkpoint(state), strict=True)
        return model.to(getattr(torch, dtype)).eval().requires_grad_(False).to(device)


def convert_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt keys (blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*) -> this module's keys.

    The BLIP contrastive projections (blip.vision_proj / text_proj) and the position_ids buffer are not used by
    the score and are dropped; any other unexpected key is an error (strict loading).
    """
    out = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, repl in _VISION_RENAMES:
                name, hits = re.subn(pattern, repl, name)
                if hits:
                    break
            out[f"visual_encoder.{name}"] = value
        elif key.startswith("blip.text_encoder."):
            name = key.removeprefix("blip.text_encoder.")
            if not name.endswith("position_ids"):
                out[f"text_encoder.{name}"] = value
        elif key.startswith(("blip.vision_proj.", "blip.text_proj.")):
            continue
        elif key.startswith("mlp.layers."):
            out[key] = value
        else:
            raise ValueError(
                f"unexpected key {key!r} in the ImageReward checkpoint; expected blip.visual_encoder.*, "
                "blip.text_encoder.*, mlp.layers.*"
            )
    return out


def blip_tokenizer(name_or_path: str) -> Any:
    """BLIP's text tokenizer: BERT (bert-base-uncased) with [DEC] as bos and [ENC] added (vocab 30524)."""
    from transformers import BertTokenizerFast

    from rewards_service.scorers.clip_common import load_pretrained

    tokenizer = load_pretrained(BertTokenizerFast.from_pretrained, name_or_path, "tokenizer")
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


def resolve_file(checkpoint: str, filename: str, option: str, what: str) -> Path:
    """A local file, or `filename` of the hub repo `checkpoint` from the Hugging Face cache; a clear error if absent."""
    if Path(checkpoint).expanduser().is_file():
        return Path(checkpoint).expanduser()
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(checkpoint, filename))
    except Exception as exc:  # noqa: BLE001 - hub errors (offline, missing repo/file) all mean "not available"
        raise FileNotFoundError(
            f"cannot find {what} {filename!r} of {checkpoint!r}: put it in the Hugging Face cache "
            f"(`hf download {checkpoint} {filename}` where the hub is reachable, then copy ~/.cache/huggingface) "
            f"or pass a local file with the option {option}=/path/to/{filename}. Cause: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
