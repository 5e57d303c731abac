"""Scoring a rollout batch through the reward service, in a Ray task (one reward client per worker process)."""

from __future__ import annotations

import time

import numpy as np
import ray

from rewards_service.client import RewardClient, RewardClientConfig, build_reward_client
from rewards_service.scorers.base import ScoreResult

_CLIENTS: dict[str, RewardClient] = {}


@ray.remote
def score_images(
    client_config: RewardClientConfig, images: np.ndarray, prompts: list[str], latency_s: float = 0.0
) -> ScoreResult:
    """Score one batch in a Ray worker through a reward client (built once per worker process).

    The client retries with backoff; a batch that still fails comes back with valid=False.
    """
    if latency_s:
        time.sleep(latency_s)
    key = client_config.model_dump_json()
    if key not in _CLIENTS:
        _CLIENTS[key] = build_reward_client(client_config)
    return _CLIENTS[key].score(images, prompts)


def reward_retries(result: ScoreResult) -> int:
    """How many times a batch's scoring call was sent again: failed attempts and calls resent after their replica was
    lost."""
    details = result.details
    return max(details.get("attempts") or [1]) - 1 + max(details.get("replica_resends") or [0])
