"""Objects lost with a node are sampled again, never silently dropped; a reward replica that never comes back is one
clear line (single-node Ray: the losses are made by hand)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cluster.trainer import Trainer
from rlcm.config.schema import load_config

pytestmark = pytest.mark.slow  # end-to-end runs

QUIET = [
    "run.sample_grid_every=100",
    "run.save_every=100",
    "run.tensorboard=false",
    "run.plots=false",
    "scaleout.control_poll_s=0.1",
]


def lost_ref(ray):
    """A reference whose object is gone as it is after its node died: its owner (a throwaway actor) was killed."""

    @ray.remote(num_cpus=0)
    class Owner:
        def put(self):
            return [ray.put(np.zeros((8, 64, 64, 3), np.uint8))]  # large enough not to be inlined in the reply

    owner = Owner.remote()
    [ref] = ray.get(owner.put.remote())
    ray.kill(owner)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # Ray frees a dead owner's objects shortly after it died
        try:
            ray.get(ref, timeout=5)
        except ray.exceptions.OwnerDiedError:
            return ref
        time.sleep(0.2)
    raise AssertionError("the object outlived its owner by 30 s")


def test_batch_whose_images_were_lost_is_sampled_again(ray_local, tmp_path, capsys):
    """A batch lands, then its images are lost before they are scored: the driver samples that batch again (same key,
    prompts and seed), counts it, says so, and the epoch trains on all its samples with their rewards."""
    ray = ray_local
    config = load_config(None, [*QUIET, "sampling.batches_per_epoch=2", "run.epochs=1"])
    trainer = Trainer(config, tmp_path)
    collect, lost = trainer.pool.collect, []

    def collect_losing_one(ready):
        done = collect(ready)
        for d in done:
            if d.job.key == (0, 1) and not lost:
                lost.append(d.job)
                d.images_ref = lost_ref(ray)
        return done

    trainer.pool.collect = collect_losing_one
    try:
        rows = trainer.run()
    finally:
        trainer.shutdown()
    assert lost, "the batch was never lost"
    assert "rlcm: the images of batch (0, 1) were lost (OwnerDiedError" in capsys.readouterr().err
    assert [r["samples_seen"] for r in rows] == [32] and rows[0]["num_invalid"] == 0
    assert rows[0]["resampled_batches"] == 1 and rows[0]["rollout_failures"] == 0


def test_no_live_reward_replica_within_reward_timeout_is_one_clear_line(ray_local):
    """The Serve client gave up waiting for a replacement replica: the driver stops with one line naming the batch, the
    deployment, reward.timeout_s and the free resources, not a traceback or invalid samples."""
    from types import SimpleNamespace

    import pytest
    from ray.exceptions import RayTaskError

    from cluster.buffer import Entry
    from cluster.watchdog import StalledError
    from rewards_service.client import RewardUnavailable

    cause = RewardUnavailable(
        "no live replica of Serve deployment 'aesthetic' answered within 600 s (reward.timeout_s); last: "
        "ActorDiedError: The actor died unexpectedly before finishing this task."
    )
    error = RayTaskError("score_images", "Traceback ...", cause).as_instanceof_cause()
    with pytest.raises(StalledError) as raised:
        Trainer._scoring_failed(SimpleNamespace(), Entry((3, 1), ["a"], None, None, 0), error)
    message = str(raised.value)
    assert message.startswith(
        "reward scoring of batch (3, 1): no live replica of Serve deployment 'aesthetic' answered within 600 s"
    )
    assert "free on the cluster now: CPU" in message and "\n" not in message
