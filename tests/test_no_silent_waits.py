"""Every wait of the driver is bounded: the issue's hang (a scoring task that never gets a CPU) ends in one clear
line."""

from __future__ import annotations

import threading

import pytest

from cluster.trainer import Trainer
from cluster.watchdog import StalledError
from rlcm.config.schema import load_config

pytestmark = pytest.mark.slow  # end-to-end runs

QUIET = [
    "run.sample_grid_every=100",
    "run.save_every=100",
    "run.tensorboard=false",
    "run.plots=false",
    "scaleout.control_poll_s=0.1",
]


def test_scoring_task_without_a_cpu_fails_within_reward_timeout(ray_local, tmp_path, monkeypatch, capsys):
    """On a cluster that may grow the preflight only warns; the 0.25-CPU scoring task then never starts (the rollout
    actor and the learner hold all 4 CPUs). Before, the driver waited forever without a word."""
    import cluster.ray_setup

    monkeypatch.setattr(cluster.ray_setup, "started_here", lambda: False)  # as on a joined cluster
    config = load_config(
        None,
        [
            *QUIET,
            "sampling.batches_per_epoch=1",
            "run.epochs=1",
            "resources.rollout_cpus=2",
            "resources.learner_cpus=2",
            "reward.timeout_s=3",
        ],
    )
    trainer = Trainer(config, tmp_path)
    assert "does not fit" in capsys.readouterr().err  # the preflight counted the scoring task
    outcome: dict = {}

    def run():
        try:
            trainer.run()
        except Exception as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the driver is still waiting 120 s later (reward.timeout_s=3)"
    finally:
        trainer.shutdown()
    error = outcome.get("error")
    assert isinstance(error, StalledError), error
    message = str(error)
    assert message.startswith("reward scoring of batch (0, 0) (0.25 CPU) did not finish within 3 s (reward.timeout_s")
    assert "free on the cluster now: CPU 0, GPU 0" in message and "change reward.timeout_s, reward.num_cpus" in message
