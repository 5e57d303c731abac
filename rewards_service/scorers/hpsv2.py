"""HPSv2 (Wu et al., 2023), differentiable in the pixels: cos(image, prompt) under the HPSv2-tuned open_clip ViT-H/14.

Convention: the raw cosine of the L2-normalized image and text features, the number HPSv2's own scoring
returns (≈ 0.2–0.3 for typical images; multiply by 100 for the percentage-style figures some papers print).
Preprocessing as HPSv2's validation transform: resize 224 (bicubic) + center crop + OpenAI CLIP mean/std.
Needs the optional `open-clip-torch` dependency: pip install "rlcm[hpsv2]".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewards_service.scorers.clip_common import CLIP_MEAN, CLIP_STD, clip_preprocess

DEFAULT_HPSV2_ARCHITECTURE = "ViT-H-14"
DEFAULT_HPSV2_CHECKPOINT = "xswu/HPSv2"
DEFAULT_HPSV2_FILE = "HPS_v2.1_compressed.pt"


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(
            f"the hpsv2 reward needs open_clip, which is not installed ({exc}); install it with: "
            'pip install "rlcm[hpsv2]"'
        ) from None
    return open_clip


def resolve_checkpoint(checkpoint: str, filename: str) -> Path:
    """A local checkpoint file, or `filename` of the hub repo `checkpoint` from the Hugging Face cache."""
    if Path(checkpoint).expanduser().is_file():
        return Path(checkpoint).expanduser()
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(checkpoint, filename))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot find the HPSv2 checkpoint {filename!r} of {checkpoint!r}: put it in the Hugging Face cache "
            f"(`hf download {checkpoint} {filename}` where the hub is reachable, then copy ~/.cache/huggingface) "
            f"or pass a local file with the option checkpoint=/path/to/{filename}. Cause: {exc}"
        ) from None


def build_open_clip(architecture: str) -> tuple[nn.Module, Any]:
    """An open_clip model (random init, no download) and its tokenizer; `architecture` is a name or a config .json."""
    open_clip = import_open_clip()
    if architecture.endswith(".json"):
        if not Path(architecture).is_file():
            raise FileNotFoundError(
                f"open_clip model config {architecture} does not exist; pass an architecture name "
                f"({DEFAULT_HPSV2_ARCHITECTURE!r}) or a config file"
            )
        open_clip.add_model_config(architecture)
        architecture = Path(architecture).stem
    if open_clip.get_model_config(architecture) is None:
        raise ValueError(f"unknown open_clip architecture {architecture!r}; HPSv2 uses {DEFAULT_HPSV2_ARCHITECTURE!r}")
    return open_clip.create_model(architecture, pretrained=None), open_clip.get_tokenizer(architecture)


def square_input_size(visual: nn.Module) -> int:
    """The image size of an open_clip vision tower, after checking `clip_preprocess` matches its normalization."""
    size = visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    mean, std = getattr(visual, "image_mean", None) or CLIP_MEAN, getattr(visual, "image_std", None) or CLIP_STD
    if height != width or not (
        torch.allclose(torch.tensor(mean), torch.tensor(CLIP_MEAN))
        and torch.allclose(torch.tensor(std), torch.tensor(CLIP_STD))
    ):
        raise ValueError(
            f"vision tower takes {size} px with mean {mean}, std {std}; the differentiable preprocessing needs a "
            "square input and CLIP mean/std"
        )
    return height


class HPSv2(nn.Module):
    """HPSv2 = cos(image features, text features) per (image, prompt) pair; images float [B, 3, H, W] in [0, 1]."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = square_input_size(model.visual)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        if prompts is None or len(prompts) != images.shape[0]:
            got = "no" if prompts is None else len(prompts)
            raise ValueError(f"HPSv2 needs one prompt per image: got {images.shape[0]} images and {got} prompts")
        dtype = next(self.model.parameters()).dtype
        pixels = clip_preprocess(images.float(), self.image_size).to(dtype)
        image = self.model.encode_image(pixels, normalize=True).float()
        text = self.model.encode_text(self.tokenizer(list(prompts)).to(images.device), normalize=True).float()
        return (image * text).sum(dim=-1)

    @classmethod
    def from_pretrained(
        cls,
        architecture: str = DEFAULT_HPSV2_ARCHITECTURE,
        checkpoint: str = DEFAULT_HPSV2_CHECKPOINT,
        filename: str = DEFAULT_HPSV2_FILE,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> HPSv2:
        """open_clip `architecture` with the HPSv2 weights: a local file, or `filename` of the hub repo `checkpoint`."""
        from rewards_service.architectures import is_random

        model, tokenizer = build_open_clip(architecture)
        if not is_random(checkpoint):  # random:<repo> keeps open_clip's random init (dry runs)
            state = torch.load(resolve_checkpoint(checkpoint, filename), map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
        return cls(model.to(device, getattr(torch, dtype)), tokenizer).eval().requires_grad_(False)
