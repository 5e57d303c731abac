"""The driver's scheduling core, without Ray: which batches to sample, when an update may start, what it trains on.

One loop serves both modes; the mode is a policy of it:
- `sync` (RLCM Algorithm 1, on-policy): an epoch's batches are submitted only when no update is running
  and the buffer is empty; an update takes exactly that epoch's batches once all are scored.
- `async`: batches are submitted whenever the buffer has room; an update takes the oldest scored batches
  after dropping those sampled more than `max_staleness` policy versions before the learner's.
Reward versions: one update never mixes them; entries scored by an older version are re-scored first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cluster.buffer import Entry, Key, TrajectoryBuffer, join_reward
from rlcm.config.prompts import batch_seed, epoch_prompts


@dataclass
class Job:
    """One rollout batch: its key (epoch, batch), prompts and noise seed (a pure function of the key)."""

    key: Key
    prompts: list[str]
    seed: int


def epoch_jobs(
    prompts: list[str],
    seed: int,
    epoch: int,
    batch_size: int,
    num_batches: int,
    distinct: bool = False,
    group_size: int = 1,
) -> list[Job]:
    """The rollout batches of one epoch; identical on every call, so a resumed or retried batch is the same.

    With `group_size` G, each drawn prompt fills G consecutive samples (a group never straddles batches: G divides
    batch_size).
    """
    drawn = [
        p
        for p in epoch_prompts(prompts, seed, epoch, num_batches * batch_size // group_size, distinct)
        for _ in range(group_size)
    ]
    return [
        Job((epoch, b), drawn[b * batch_size : (b + 1) * batch_size], batch_seed(seed, epoch, b))
        for b in range(num_batches)
    ]


def scored_versions(entries: list[Entry]) -> list[str]:
    """The reward versions that produced at least one valid reward (a failed batch's empty version is not one)."""
    return sorted({e.reward_version for e in entries if e.reward_version and e.valid is not None and e.valid.any()})


def entries_to_rescore(entries: list[Entry]) -> list[Entry]:
    """Entries scored by an older reward version than the newest one seen (by arrival order)."""
    scored = [e for e in entries if e.reward_version and e.valid is not None and e.valid.any()]
    if len({e.reward_version for e in scored}) <= 1:
        return []
    newest = max(scored, key=lambda e: e.scored_seq).reward_version
    return [e for e in scored if e.reward_version != newest]


def update_inputs(entries: list[Entry]) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and validity of an update's samples, in entry order."""
    return np.concatenate([e.rewards for e in entries]), np.concatenate([e.valid for e in entries])


def reward_summary(entries: list[Entry]) -> dict:
    """reward_mean / reward_std over valid samples, num_invalid, the reward version(s) that scored them, and
    `reward_error`: the distinct errors that left samples without a reward (None if none did)."""
    rewards, valid = update_inputs(entries)
    good = rewards[valid]
    errors = list(dict.fromkeys(e.reward_error for e in entries if e.reward_error and not e.valid.all()))
    return {
        "reward_mean": float(good.mean()) if len(good) else math.nan,
        "reward_std": float(good.std()) if len(good) else math.nan,
        "num_invalid": int((~valid).sum()),
        "reward_version": ",".join(scored_versions(entries)),
        "reward_error": "; ".join(errors) if errors else None,
    }


def mean_over_ranks(metrics: list[dict]) -> dict:
    """Average each numeric metric over the learner ranks (each rank trains on its own shard)."""
    return {
        k: float(np.mean([m[k] for m in metrics])) if isinstance(v, (int, float)) else v for k, v in metrics[0].items()
    }


class Scheduler:
    """Decides what to sample next and when an update may take which batches; the Ray loop carries it out."""

    def __init__(
        self,
        prompts: list[str],
        batch_size: int,
        num_batches: int,
        seed: int,
        mode: Literal["sync", "async"],
        max_staleness: int,
        capacity: int,
        start_epoch: int = 0,
        distinct_prompts: bool = False,
        group_size: int = 1,
    ):
        self.prompts, self.batch_size, self.num_batches, self.seed = prompts, batch_size, num_batches, seed
        self.distinct_prompts = distinct_prompts  # ROCM's monitor batches: each held-out prompt once
        self.group_size = group_size
        self.mode, self.max_staleness = mode, max_staleness
        self.buffer = TrajectoryBuffer(max(capacity, num_batches))
        self.updating = False
        self._stream = self._jobs_from(start_epoch)
        self._scored = 0

    def _jobs_from(self, epoch: int) -> Iterator[Job]:
        while True:
            yield from epoch_jobs(
                self.prompts,
                self.seed,
                epoch,
                self.batch_size,
                self.num_batches,
                self.distinct_prompts,
                self.group_size,
            )
            epoch += 1

    def to_submit(self) -> list[Job]:
        """Jobs to sample now, each reserving a buffer slot: sync, a whole epoch when idle; async, while there is
        room."""
        if self.mode == "sync":
            idle = not (self.updating or self.buffer.entries or self.buffer.reserved)
            count = self.num_batches if idle else 0
        else:
            count = self.buffer.free()
        jobs = [next(self._stream) for _ in range(count)]
        for _ in jobs:
            self.buffer.reserve()
        return jobs

    def landed(self, entry: Entry) -> None:
        """A sampled batch arrived (its reward is still pending)."""
        self.buffer.add(entry)

    def scored(
        self, entry: Entry, rewards: list[float], valid: list[bool] | None, version: str, error: str | None = None
    ) -> None:
        """A reward arrived for `entry` (also after a re-score); arrival order decides the newest version."""
        join_reward(entry, rewards, valid, version, error)
        self._scored += 1
        entry.scored_seq = self._scored

    def take_update(self, learner_version: int) -> list[Entry] | None:
        """The batches of the next update, oldest first, or None if it cannot start yet."""
        if self.updating:
            return None
        if self.mode == "async":
            self.buffer.drop_stale(learner_version, self.max_staleness)
        ready = self.buffer.ready()
        if len(ready) < self.num_batches:
            return None
        self.updating = True
        return self.buffer.take([e.key for e in ready[: self.num_batches]], learner_version)

    def update_done(self) -> None:
        self.updating = False
