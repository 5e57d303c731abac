"""Pure reward scorers: uint8 images [B, H, W, 3] and prompts in, floats out."""

from rewards_service.scorers.base import Scorer, ScoreResult, check_batch
from rewards_service.scorers.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb

__all__ = [
    "Scorer",
    "ScoreResult",
    "check_batch",
    "JpegCompressibility",
    "JpegIncompressibility",
    "jpeg_size_kb",
    "build_scorer",
]


def build_scorer(name: str, **options) -> Scorer:
    """Construct the in-process scorer registered under `name`."""
    factories = {
        "jpeg_compressibility": JpegCompressibility,
        "jpeg_incompressibility": JpegIncompressibility,
    }
    if name not in factories:
        raise ValueError(f"unknown reward {name!r}; known rewards: {sorted(factories)}")
    return factories[name](**options)
