"""The driver's scheduling core without Ray: dispatch policy, staleness, reward-version unification, summaries."""

from __future__ import annotations

import math

import numpy as np

from cluster.buffer import Entry
from cluster.schedule import Scheduler, entries_to_rescore, epoch_jobs, reward_summary, scored_versions

PROMPTS = ["cat", "dog", "hen", "owl"]


def scheduler(mode: str, num_batches: int = 2, capacity: int = 4, max_staleness: int = 1) -> Scheduler:
    return Scheduler(
        PROMPTS,
        batch_size=2,
        num_batches=num_batches,
        seed=0,
        mode=mode,
        max_staleness=max_staleness,
        capacity=capacity,
    )


def land(s: Scheduler, job, policy_version: int, rewards=(1.0, 2.0), version: str = "1", valid=None) -> Entry:
    entry = Entry(job.key, job.prompts, f"traj{job.key}", f"img{job.key}", policy_version)
    s.landed(entry)
    s.scored(entry, list(rewards), valid, version)
    return entry


def test_epoch_jobs_are_a_pure_function_of_seed_epoch_batch():
    a, b = epoch_jobs(PROMPTS, 0, 3, 2, 2), epoch_jobs(PROMPTS, 0, 3, 2, 2)
    assert [(j.key, j.prompts, j.seed) for j in a] == [(j.key, j.prompts, j.seed) for j in b]
    assert [j.key for j in a] == [(3, 0), (3, 1)]
    assert a[0].seed != epoch_jobs(PROMPTS, 0, 4, 2, 2)[0].seed


def test_sync_releases_one_epoch_only_when_idle():
    s = scheduler("sync")
    jobs = s.to_submit()
    assert [j.key for j in jobs] == [(0, 0), (0, 1)]
    assert s.to_submit() == []  # epoch 0 still being sampled
    land(s, jobs[0], 0)
    assert s.take_update(0) is None  # only half the epoch is scored
    land(s, jobs[1], 0)
    assert s.to_submit() == []
    entries = s.take_update(0)
    assert [e.key for e in entries] == [(0, 0), (0, 1)]
    assert s.to_submit() == []  # on-policy: nothing new while the update runs
    s.update_done()
    assert [j.key for j in s.to_submit()] == [(1, 0), (1, 1)]


def test_async_fills_the_buffer_and_drops_stale_batches():
    s = scheduler("async", capacity=4, max_staleness=1)
    jobs = s.to_submit()
    assert [j.key for j in jobs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert s.to_submit() == []  # buffer full (reserved slots count)
    land(s, jobs[0], policy_version=0)
    land(s, jobs[1], policy_version=2)
    land(s, jobs[2], policy_version=3)
    entries = s.take_update(learner_version=3)  # version 0 is 3 behind > 1: dropped
    assert [e.key for e in entries] == [(0, 1), (1, 0)]
    assert s.buffer.dropped_stale == 2
    assert dict(s.buffer.staleness_hist) == {1: 2, 0: 2}
    assert s.take_update(3) is None  # one update at a time
    s.update_done()
    assert [j.key for j in s.to_submit()] == [(2, 0), (2, 1), (3, 0)]  # (1, 1) still holds its slot


def test_rescore_targets_versions_older_than_the_newest_arrival():
    s = scheduler("sync", num_batches=3, capacity=3)
    jobs = s.to_submit()
    new = land(s, jobs[0], 0, version="2")
    old = land(s, jobs[1], 0, version="1")  # an old replica answered last: arrival, not key or string order
    failed = land(s, jobs[2], 0, rewards=(math.nan, math.nan), version="", valid=[False, False])
    assert entries_to_rescore([new, old, failed]) == [new]
    s.scored(new, [3.0, 4.0], None, "1")
    assert entries_to_rescore([new, old, failed]) == []
    assert scored_versions([new, old, failed]) == ["1"]  # the failed batch's empty version is not listed


def test_reward_summary_counts_invalid_and_ignores_their_values():
    s = scheduler("sync")
    jobs = s.to_submit()
    a = land(s, jobs[0], 0, rewards=(1.0, 5.0), valid=[True, False])
    b = land(s, jobs[1], 0, rewards=(3.0, math.inf))
    summary = reward_summary([a, b])
    assert summary["reward_mean"] == 2.0 and summary["reward_std"] == 1.0
    assert summary["num_invalid"] == 2 and summary["reward_version"] == "1"
    none_valid = land(scheduler("sync"), jobs[0], 0, rewards=(np.nan, np.nan), version="", valid=[False, False])
    assert math.isnan(reward_summary([none_valid])["reward_mean"])
    assert reward_summary([none_valid])["reward_version"] == ""


def test_rocm_holds_out_the_last_tenth_of_the_prompts_for_monitoring():
    from rlcm.config.prompts import holdout_split

    train, held = holdout_split([f"p{i}" for i in range(10)])
    assert held == ["p9"] and train == [f"p{i}" for i in range(9)]
    train, held = holdout_split([f"p{i}" for i in range(45)])
    assert held == [f"p{i}" for i in range(40, 45)] and not set(train) & set(held)
    assert holdout_split(["only"]) == (["only"], ["only"])  # one prompt: nothing to hold out
