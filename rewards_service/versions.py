"""One PPO batch never mixes reward versions: detect a switch and re-score the stale part."""

from __future__ import annotations

from typing import Callable, Sequence

from rewards_service.scorers.base import ScoreResult


class MixedRewardVersions(RuntimeError):
    """The results of one batch come from different reward versions."""


def result_versions(results: Sequence[ScoreResult]) -> set[str]:
    """Versions of the results that scored at least one valid sample."""
    return {r.version for r in results if any(r.valid)}


def batch_version(results: Sequence[ScoreResult]) -> str:
    """The single reward version of a batch; raises MixedRewardVersions if there are several."""
    versions = result_versions(results)
    if len(versions) > 1:
        raise MixedRewardVersions(f"one batch has rewards from versions {sorted(versions)}; re-score it with unify_versions")
    return versions.pop() if versions else ""


def unify_versions(results: list[ScoreResult], rescore: Callable[[int], ScoreResult], max_rounds: int = 3) -> list[ScoreResult]:
    """Re-score (`rescore(i)`) every result whose version differs from the newest one (the last valid result's)
    until the batch has one version; the learner then trains on a single-version batch."""
    results = list(results)
    for _ in range(max_rounds):
        valid = [r for r in results if any(r.valid)]
        if len(result_versions(valid)) <= 1:
            return results
        newest = valid[-1].version
        for i, r in enumerate(results):
            if any(r.valid) and r.version != newest:
                results[i] = rescore(i)
    batch_version(results)
    return results
