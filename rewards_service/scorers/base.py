"""The interface every reward implements, in process, behind FastAPI, or behind Ray Serve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

FAILED_VERSION = ""
"""The version of a result that no reward scored (`ScoreResult.failed`): never a reward version."""


class ScorerUnavailable(RuntimeError):
    """The reward cannot score right now (replica gone, overloaded, redeployed mid-request); retrying may help."""


@dataclass
class ScoreResult:
    """Rewards for a batch, the version of the reward that produced them, and per-sample details.

    `valid[i]` is False when sample i could not be scored (its reward is NaN and must be excluded
    from advantages, never read as a score); it defaults to all True. A result that no reward
    produced (`failed`, `is_failed`) has version `FAILED_VERSION` (""), which must not be reported
    as a reward version.
    """

    rewards: list[float]
    version: str
    details: dict[str, list[Any]] = field(default_factory=dict)
    valid: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.valid:
            self.valid = [True] * len(self.rewards)
        if len(self.valid) != len(self.rewards):
            raise ValueError(f"valid has {len(self.valid)} entries for {len(self.rewards)} rewards")

    @property
    def num_invalid(self) -> int:
        """How many samples could not be scored."""
        return sum(not v for v in self.valid)

    @property
    def is_failed(self) -> bool:
        """True when no reward produced this result (a client gave up): its version is not a reward version."""
        return self.version == FAILED_VERSION

    @classmethod
    def failed(cls, n: int, version: str, error: str) -> ScoreResult:
        """A result marking all `n` samples invalid (NaN reward) with the error that caused it; clients that
        got no answer pass `FAILED_VERSION`."""
        return cls(rewards=[float("nan")] * n, version=version, details={"error": [error] * n}, valid=[False] * n)


@runtime_checkable
class Scorer(Protocol):
    """A reward: `images` is uint8 [B, H, W, 3] (HWC, RGB), `prompts` has length B.

    `score` raises ValueError for an input it cannot score (HTTP 422) and ScorerUnavailable for a
    passing fault (HTTP 503); any other exception is a server fault (HTTP 500).
    """

    name: str
    version: str

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult: ...


def check_batch(images: np.ndarray, prompts: Sequence[str]) -> None:
    """Raise ValueError with a clear message if a batch is not uint8 [B, H, W, 3] with B prompts."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 numpy array, got {type(images).__name__} {getattr(images, 'dtype', '')}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [B, H, W, 3], got {list(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts; they must match")
