"""`TrajectoryBuffer`: the driver-owned index of trajectories in the object store, joined with their rewards.

The driver submits every rollout task, so it owns the returned objects: they outlive the rollout
actor that produced them. Entries are keyed by (epoch, batch), tagged with the policy version
that sampled them and the reward version that scored them; rewards are joined by that key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

Key = tuple[int, int]


@dataclass
class Entry:
    key: Key
    prompts: list[str]
    trajectory_ref: object
    images_ref: object
    policy_version: int
    reward_ref: object = None
    rewards: np.ndarray | None = None
    valid: np.ndarray | None = None
    reward_version: str | None = None
    scored_seq: int = 0  # arrival order of the reward, to tell the newest reward version
    reward_error: str | None = None  # why samples of this batch have no reward (the scorer's or client's error text)


def staleness(learner_version: int, policy_version: int) -> int:
    """How many updates the learner is ahead of the policy that sampled a trajectory."""
    return learner_version - policy_version


def join_reward(
    entry: Entry, rewards: list[float], valid: list[bool] | None, version: str, error: str | None = None
) -> None:
    """Attach a ScoreResult's fields; non-finite rewards are invalid, never read as scores."""
    values = np.asarray(rewards, dtype=np.float64)
    mask = np.asarray(valid if valid else [True] * len(values), dtype=bool) & np.isfinite(values)
    entry.rewards, entry.valid, entry.reward_version, entry.reward_error = values, mask, version, error


def error_text(details: dict) -> str | None:
    """The distinct error messages in a ScoreResult's per-sample `details["error"]`, joined; None if there are none."""
    errors = list(dict.fromkeys(str(e) for e in details.get("error", []) if e))
    return "; ".join(errors) if errors else None


@dataclass
class TrajectoryBuffer:
    """Bounded: `capacity` batches, counting those still being sampled (`reserved`)."""

    capacity: int
    entries: dict[Key, Entry] = field(default_factory=dict)
    reserved: int = 0
    dropped_stale: int = 0
    staleness_hist: Counter = field(default_factory=Counter)

    def free(self) -> int:
        return max(0, self.capacity - len(self.entries) - self.reserved)

    def reserve(self) -> None:
        self.reserved += 1

    def add(self, entry: Entry) -> None:
        self.reserved -= 1
        self.entries[entry.key] = entry

    def resample(self, key: Key) -> Entry:
        """Remove an entry whose objects were lost (their node is gone); its slot stays reserved until it lands
        again."""
        self.reserved += 1
        return self.entries.pop(key)

    def ready(self) -> list[Entry]:
        """Scored entries, oldest key first."""
        return sorted((e for e in self.entries.values() if e.rewards is not None), key=lambda e: e.key)

    def drop_stale(self, learner_version: int, max_staleness: int) -> int:
        """Remove entries more than `max_staleness` versions behind; returns how many samples were dropped."""
        stale = [k for k, e in self.entries.items() if staleness(learner_version, e.policy_version) > max_staleness]
        dropped = sum(len(self.entries.pop(k).prompts) for k in stale)
        self.dropped_stale += dropped
        return dropped

    def take(self, keys: list[Key], learner_version: int) -> list[Entry]:
        """Remove and return these entries, recording their staleness."""
        taken = [self.entries.pop(k) for k in keys]
        for e in taken:
            self.staleness_hist[staleness(learner_version, e.policy_version)] += len(e.prompts)
        return taken
