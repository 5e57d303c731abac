"""Composite reward: a weighted sum of named rewards, each part kept in the details."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rewards_service.scorers.base import Scorer, ScoreResult, check_batch


def weighted_sum(parts: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """Σ_name weights[name] · parts[name][i] for each sample i (NaN stays NaN)."""
    n = len(next(iter(parts.values())))
    return [sum(weights[name] * parts[name][i] for name in weights) for i in range(n)]


def composite_version(versions: Mapping[str, str], weights: Mapping[str, float]) -> str:
    """A version string that changes when any part's version or weight changes."""
    return "+".join(f"{weights[n]:g}*{n}@{versions[n]}" for n in sorted(weights))


class CompositeScorer:
    """Reward = Σ weight · part; details carry each part's reward as `part:<name>`."""

    def __init__(self, parts: Mapping[str, Scorer], weights: Mapping[str, float], name: str = "composite") -> None:
        if not weights:
            raise ValueError("a composite reward needs at least one weighted part")
        missing = sorted(set(weights) - set(parts))
        if missing:
            raise ValueError(f"composite weights name rewards without a scorer: {missing}")
        self.name = name
        self.parts = {n: parts[n] for n in weights}
        self.weights = dict(weights)
        self.version = composite_version({n: s.version for n, s in self.parts.items()}, self.weights)

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        check_batch(images, prompts)
        results = {n: s.score(images, prompts) for n, s in self.parts.items()}
        rewards = weighted_sum({n: r.rewards for n, r in results.items()}, self.weights)
        valid = [all(r.valid[i] for r in results.values()) and not math.isnan(rewards[i]) for i in range(len(rewards))]
        details = {f"part:{n}": r.rewards for n, r in results.items()}
        for n, r in results.items():
            details.update({f"{n}:{k}": v for k, v in r.details.items()})
        return ScoreResult(rewards=rewards, version=self.version, details=details, valid=valid)
