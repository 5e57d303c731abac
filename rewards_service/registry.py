"""The one reward registry: `REWARDS` maps each reward name to its scorer and, if differentiable, its torch module.

Scorers take uint8 images [B, H, W, 3] and prompts and return floats; differentiable rewards also have a module
`forward(images float [B, 3, H, W] in [0, 1], prompts) -> [B]` (`build_differentiable_reward`). Importing this
module imports neither torch nor a model: factories import their scorer when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rewards_service.scorers.base import Scorer
from rewards_service.scorers.composite import CompositeScorer
from rewards_service.scorers.jpeg import JpegCompressibility, JpegIncompressibility

if TYPE_CHECKING:
    from torch import nn


def _aesthetic(**options: Any) -> Scorer:
    from rewards_service.scorers.aesthetic import AestheticScorer

    return AestheticScorer(**options)


def _llava_bertscore(**options: Any) -> Scorer:
    from rewards_service.scorers.llava_bertscore import LlavaBertScore

    return LlavaBertScore(**options)


def _composite(weights: dict[str, float], parts: dict[str, dict[str, Any]] | None = None) -> Scorer:
    parts = parts or {}
    return CompositeScorer({n: build_scorer(n, **parts.get(n, {})) for n in weights}, weights)


@dataclass(frozen=True)
class RewardEntry:
    """One registered reward: its scorer (uint8 arrays in, floats out) and, if differentiable, its torch module.

    `module` is the "package.module:factory" path of a factory returning an `nn.Module` with
    `forward(images float [B, 3, H, W] in [0, 1], prompts) -> [B]` (imported only when needed: torch).
    """

    scorer: Callable[..., Scorer]
    module: str | None = None

    @property
    def differentiable(self) -> bool:
        return self.module is not None


def _served_module(name: str) -> Callable[..., Scorer]:
    """The scorer of a differentiable reward: its torch module run without grad (the number the learner climbs)."""

    def factory(version: str = "1", device: str | None = None, **options: Any) -> Scorer:
        from rewards_service.differentiable import DifferentiableScorer

        return DifferentiableScorer(name, build_differentiable_reward(name, **options), version, device)

    return factory


def _differentiable(name: str, scorer: Callable[..., Scorer] | None = None) -> RewardEntry:
    return RewardEntry(scorer or _served_module(name), f"rewards_service.differentiable:{name}_module")


REWARDS: dict[str, RewardEntry] = {
    "jpeg_compressibility": RewardEntry(JpegCompressibility),
    "jpeg_incompressibility": RewardEntry(JpegIncompressibility),
    "aesthetic": _differentiable("aesthetic", _aesthetic),
    "llava_bertscore": RewardEntry(_llava_bertscore),
    "composite": RewardEntry(_composite),
    "smoothness": _differentiable("smoothness"),
    "clip_score": _differentiable("clip_score"),
    "pickscore": _differentiable("pickscore"),
    "hpsv2": _differentiable("hpsv2"),
    "blip_score": _differentiable("blip_score"),
    "image_reward": _differentiable("image_reward"),
}
REWARD_NAMES = tuple(REWARDS)


def differentiable_reward_names() -> list[str]:
    return sorted(name for name, entry in REWARDS.items() if entry.differentiable)


def _import(path: str) -> Callable[..., Scorer]:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import scorer {path!r} ({exc}); use 'package.module:ClassName'") from None


def build_scorer(name: str, version: str | None = None, **options: Any) -> Scorer:
    """The scorer registered under `name` (or a 'module:Class' import path); `version` overrides its version."""
    if ":" in name:
        factory = _import(name)
    elif name in REWARDS:
        factory = REWARDS[name].scorer
    else:
        raise ValueError(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)} or a 'module:Class' path")
    scorer = factory(**options)
    if version is not None:
        scorer.version = version
    return scorer


def build_differentiable_reward(name: str, **options: Any) -> nn.Module:
    """The frozen differentiable reward module registered under `name` (eval mode, no trainable weights)."""
    entry = REWARDS.get(name)
    if entry is None or not entry.differentiable:
        raise ValueError(
            f"reward {name!r} is not differentiable; differentiable rewards: {differentiable_reward_names()}"
        )
    path, _, factory = entry.module.partition(":")
    module = getattr(importlib.import_module(path), factory)(**options)
    return module.eval().requires_grad_(False)
