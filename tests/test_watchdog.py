"""Deadlines of what the driver waits on: the oldest missed one becomes one line naming keys and free resources."""

from __future__ import annotations

import pytest

from cluster.watchdog import StalledError, Watchdog


def test_oldest_expired_deadline_is_reported_with_its_keys_and_the_free_resources():
    now = [0.0]
    dog = Watchdog(free=lambda: "CPU 0, GPU 0", clock=lambda: now[0])
    dog.start(
        "reward-ref", "reward scoring of batch (0, 1) (0.25 CPU each)", 5.0, "reward.timeout_s", ("reward.num_cpus",)
    )
    now[0] = 2.0
    dog.start("train-ref", "learner update", 4.0, "scaleout.call_timeout_s", ("resources.learner_cpus",))
    now[0] = 4.9
    dog.check()
    dog.done("reward-ref")
    now[0] = 5.5
    dog.check()  # the finished one no longer counts; the update has 0.5 s left (started at 2, 4 s)
    dog.start(
        "reward-2", "reward scoring of batch (0, 2) (0.25 CPU each)", 5.0, "reward.timeout_s", ("reward.num_cpus",)
    )
    now[0] = 11.0
    with pytest.raises(StalledError) as error:
        dog.check()
    assert str(error.value) == (
        "learner update did not finish within 4 s (scaleout.call_timeout_s; waited 9 s): it was never scheduled or it "
        "hangs; free on the cluster now: CPU 0, GPU 0; change scaleout.call_timeout_s, resources.learner_cpus, free "
        "the cluster or give it more nodes"
    )
