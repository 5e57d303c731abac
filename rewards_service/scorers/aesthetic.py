"""LAION aesthetic predictor: an MLP head on L2-normalized CLIP ViT-L/14 image embeddings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rewards_service.scorers.base import ScoreResult, check_batch
from rewards_service.scorers.clip_common import clip_preprocess, load_pretrained

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class AestheticHead(nn.Module):
    """768→1024→128→64→16→1 with dropout between and no activations (the LAION layout)."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def default_head_path() -> Path:
    """The head file shipped inside the package."""
    return Path(str(resources.files("rewards_service") / "data" / HEAD_FILE))


def load_aesthetic_head(path: str | Path | None = None, sha256: str | None = HEAD_SHA256) -> AestheticHead:
    """Load the MLP head in fp32 after checking its sha256 (pass sha256=None to skip for a custom head)."""
    path = Path(path) if path else default_head_path()
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic head not found at {path}; reinstall rlcm or pass head_path")
    if sha256 is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha256:
            raise ValueError(
                f"aesthetic head {path} has sha256 {digest}, expected {sha256}; the file is corrupt or not the LAION "
                "head"
            )
    head = AestheticHead()
    head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return head.float().eval()


class AestheticModel(nn.Module):
    """Differentiable aesthetic score: float images in [0, 1], [B, 3, H, W] -> scores [B] (fp32 head)."""

    def __init__(self, clip, head: AestheticHead) -> None:
        super().__init__()
        projection_dim = clip.config.projection_dim
        if projection_dim != head.layers[0].in_features:
            raise ValueError(
                f"CLIP projection_dim {projection_dim} does not fit the head input {head.layers[0].in_features}; use "
                "a ViT-L/14 (projection_dim=768)"
            )
        self.clip = clip
        self.head = head.float()
        self.image_size = clip.config.image_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized CLIP image embeddings in fp32."""
        pixels = clip_preprocess(images.float(), self.image_size).to(self.clip.dtype)
        embeds = self.clip(pixel_values=pixels).image_embeds.float()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images)).squeeze(-1)

    @classmethod
    def from_pretrained(
        cls,
        clip_model: str = DEFAULT_CLIP,
        head_path: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> AestheticModel:
        """CLIP by hub id or local directory plus the shipped LAION head."""
        from transformers import CLIPVisionModelWithProjection

        clip = load_pretrained(CLIPVisionModelWithProjection.from_pretrained, clip_model, "clip_model", dtype=dtype)
        return cls(clip, load_aesthetic_head(head_path)).to(device).eval().requires_grad_(False)


class AestheticScorer:
    """Reward = LAION aesthetic score of each image."""

    name = "aesthetic"

    def __init__(
        self,
        clip_model: str = DEFAULT_CLIP,
        head_path: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        version: str = "1",
        model: AestheticModel | None = None,
    ) -> None:
        self.version = version
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = (
            (model or AestheticModel.from_pretrained(clip_model, head_path, getattr(torch, dtype)))
            .to(self.device)
            .eval()
        )

    @torch.no_grad()
    def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        check_batch(images, prompts)
        pixels = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        scores = self.model(pixels).cpu().tolist()
        return ScoreResult(rewards=[float(s) for s in scores], version=self.version)
