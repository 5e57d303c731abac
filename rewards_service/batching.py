"""Merge many small scoring requests into one scorer call and split the result back (for @serve.batch)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from rewards_service.scorers.base import Scorer, ScoreResult


def split_result(result: ScoreResult, sizes: Sequence[int]) -> list[ScoreResult]:
    """Cut a result of sum(sizes) samples into consecutive results of `sizes` samples."""
    out, start = [], 0
    for n in sizes:
        sl = slice(start, start + n)
        out.append(ScoreResult(result.rewards[sl], result.version, {k: v[sl] for k, v in result.details.items()}, result.valid[sl]))
        start += n
    return out


def score_merged(scorer: Scorer, requests: Sequence[tuple[np.ndarray, Sequence[str]]]) -> list[ScoreResult]:
    """Score requests with one scorer call per image size; results come back in request order."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (images, _) in enumerate(requests):
        groups[images.shape[1:]].append(i)
    results: list[ScoreResult | None] = [None] * len(requests)
    for indices in groups.values():
        images = np.concatenate([requests[i][0] for i in indices])
        prompts = [p for i in indices for p in requests[i][1]]
        merged = scorer.score(images, prompts)
        for i, part in zip(indices, split_result(merged, [len(requests[i][1]) for i in indices])):
            results[i] = part
    return results
