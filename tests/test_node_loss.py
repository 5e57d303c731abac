"""Nodes lost while a run goes on, on a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

Expensive (each scenario starts 4 Ray nodes and trains on them), so not part of the default suite:
`bash scripts/node_loss.sh` runs them (RLCM_NODE_LOSS=1).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("RLCM_NODE_LOSS"), reason="multi-node scenarios: run `bash scripts/node_loss.sh`"),
]

FAST = ["sampling.batches_per_epoch=2", "run.sample_grid_every=100", "scaleout.control_poll_s=0.1", "run.tensorboard=false",
        "run.plots=false", "reward.num_cpus=0"]


@pytest.fixture
def nodes():
    """A head without CPUs (the driver's node), a learner node (1 CPU) and two rollout nodes (1 CPU each)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip("this process already runs on another Ray instance")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    named = {"learner": cluster.add_node(num_cpus=1), "rollout1": cluster.add_node(num_cpus=1), "rollout2": cluster.add_node(num_cpus=1)}
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield cluster, named
    ray.shutdown()
    cluster.shutdown()


def remove_when(cluster, node, ready, log: list) -> threading.Thread:
    """Remove `node` (as a crash would: no graceful drain) once `ready()` holds."""

    def remove():
        while not ready():
            time.sleep(0.05)
        log.append(time.monotonic())
        cluster.remove_node(node, allow_graceful=False)

    thread = threading.Thread(target=remove, daemon=True)
    thread.start()
    return thread


def test_rollout_node_lost_mid_epoch_run_completes_with_exact_counts(nodes, tmp_path):
    from cluster.config import load_config
    from cluster.driver import Trainer

    cluster, named = nodes
    config = load_config(None, [*FAST, "run.epochs=3", "resources.num_rollout_actors=2", "run.save_every=1"])
    trainer = Trainer(config, tmp_path)
    removed: list[float] = []
    # during epoch 2's sampling: after epoch 1's row, once batches are in flight again
    remove_when(cluster, named["rollout1"], lambda: len(trainer.out.rows()) == 1 and len(trainer.pool.inflight) > 0, removed)
    try:
        rows = trainer.run()
    finally:
        trainer.shutdown()
    assert removed, "the node was never removed"
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["samples_seen"] for r in rows] == [32, 64, 96] and all(r["num_invalid"] == 0 for r in rows)
    assert rows[-1]["rollout_failures"] >= 1
