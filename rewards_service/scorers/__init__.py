"""Pure reward scorers: uint8 images [B, H, W, 3] and prompts in, floats out."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from rewards_service.scorers.base import Scorer, ScoreResult, check_batch
from rewards_service.scorers.composite import CompositeScorer
from rewards_service.scorers.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb

__all__ = [
    "Scorer",
    "ScoreResult",
    "check_batch",
    "CompositeScorer",
    "JpegCompressibility",
    "JpegIncompressibility",
    "jpeg_size_kb",
    "build_scorer",
    "REWARD_NAMES",
]


def _aesthetic(**options: Any) -> Scorer:
    from rewards_service.scorers.aesthetic import AestheticScorer

    return AestheticScorer(**options)


def _llava_bertscore(**options: Any) -> Scorer:
    from rewards_service.scorers.llava_bertscore import LlavaBertScore

    return LlavaBertScore(**options)


def _differentiable(name: str) -> Callable[..., Scorer]:
    def factory(**options: Any) -> Scorer:
        from rewards_service.differentiable import DifferentiableScorer

        return DifferentiableScorer(name, **options)

    return factory


def _composite(weights: dict[str, float], parts: dict[str, dict[str, Any]] | None = None) -> Scorer:
    parts = parts or {}
    return CompositeScorer({n: build_scorer(n, **parts.get(n, {})) for n in weights}, weights)


FACTORIES: dict[str, Callable[..., Scorer]] = {
    "jpeg_compressibility": JpegCompressibility,
    "jpeg_incompressibility": JpegIncompressibility,
    "aesthetic": _aesthetic,
    "llava_bertscore": _llava_bertscore,
    "composite": _composite,
    "smoothness": _differentiable("smoothness"),
    "clip_score": _differentiable("clip_score"),
    "pickscore": _differentiable("pickscore"),
    "hpsv2": _differentiable("hpsv2"),
    "blip_score": _differentiable("blip_score"),
    "image_reward": _differentiable("image_reward"),
}
REWARD_NAMES = tuple(FACTORIES)


def _import(path: str) -> Callable[..., Scorer]:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import scorer {path!r} ({exc}); use 'package.module:ClassName'") from None


def build_scorer(name: str, version: str | None = None, **options: Any) -> Scorer:
    """Construct the scorer registered under `name` (or a 'module:Class' import path); `version` overrides its version."""
    if ":" in name:
        factory = _import(name)
    elif name in FACTORIES:
        factory = FACTORIES[name]
    else:
        raise ValueError(f"unknown reward {name!r}; known rewards: {sorted(FACTORIES)} or a 'module:Class' path")
    scorer = factory(**options)
    if version is not None:
        scorer.version = version
    return scorer
