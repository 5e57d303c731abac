"""Group images by size for the scorer calls and put the results back in request order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from rewards_service.scorers.base import Scorer, ScoreResult, ScorerUnavailable


def split_result(result: ScoreResult, sizes: Sequence[int]) -> list[ScoreResult]:
    """Cut a result of sum(sizes) samples into consecutive results of `sizes` samples."""
    out, start = [], 0
    for n in sizes:
        sl = slice(start, start + n)
        out.append(
            ScoreResult(
                result.rewards[sl], result.version, {k: v[sl] for k, v in result.details.items()}, result.valid[sl]
            )
        )
        start += n
    return out


def merge_results(parts: Sequence[tuple[Sequence[int], ScoreResult]], n: int) -> ScoreResult:
    """One result of `n` samples from results of index groups; a detail a part lacks is None there.

    Raises ScorerUnavailable if the parts carry different versions (the reward was swapped mid-request).
    """
    versions = sorted({result.version for _, result in parts})
    if len(versions) > 1:
        raise ScorerUnavailable(f"the reward changed version while scoring this request ({versions}); send it again")
    rewards, valid = [float("nan")] * n, [False] * n
    details = {key: [None] * n for _, result in parts for key in result.details}
    for indices, result in parts:
        for j, i in enumerate(indices):
            rewards[i], valid[i] = result.rewards[j], result.valid[j]
            for key, values in result.details.items():
                details[key][i] = values[j]
    return ScoreResult(rewards, versions[0], details, valid)


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
