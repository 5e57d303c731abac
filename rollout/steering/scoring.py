"""Steering's reward through the clients training uses (`rewards_service.client`): over HTTP (a standalone or Serve
reward service), through a Serve handle, or in process."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewards_service.client import HttpRewardClient, RewardClient, ServeHandleRewardClient
from rollout.steering.particles import Score


def client_origin(client: RewardClient) -> str:
    """Where `client` scores, for error messages: the service URL, the Serve deployment, or in process."""
    if isinstance(client, HttpRewardClient):
        return f"the reward service at {client.url}"
    if isinstance(client, ServeHandleRewardClient):
        return f"the Serve deployment {client.reward!r}"
    return "the in-process scorer"


def client_score(client: RewardClient) -> Score:
    """`client` as steering calls it: one request for all the particles of a step; a sample the client could not score
    (its retries spent, the service down, the scorer's marking) is a RuntimeError naming where it was scored, never a
    NaN particle."""
    origin = client_origin(client)

    def score(images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        result = client.score(images, list(prompts))
        invalid = [i for i, ok in enumerate(result.valid) if not ok]
        if invalid:
            errors = [e for e in result.details.get("error", []) if e]
            reason = errors[0] if errors else "marked invalid by the scorer"
            raise RuntimeError(
                f"{origin} did not score {len(invalid)} of {len(prompts)} particles ({client.reward}): {reason}"
            )
        return np.asarray(result.rewards, dtype=np.float64)

    return score
