"""Nodes lost while a run goes on, on a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

Scenarios: a rollout actor's node, a learner's node (RLCM and ROCM) and a reward replica's node (Serve backend)
disappear. Expensive (each scenario starts 4 Ray nodes and trains on them), so not part of the default suite:
`bash scripts/node_loss.sh` runs them (RLCM_NODE_LOSS=1).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import ray

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("RLCM_NODE_LOSS"), reason="multi-node scenarios: run `bash scripts/node_loss.sh`"
    ),
]

FAST = [
    "sampling.batches_per_epoch=2",
    "run.sample_grid_every=100",
    "scaleout.control_poll_s=0.1",
    "run.tensorboard=false",
    "run.plots=false",
    "reward.num_cpus=0",
]


@pytest.fixture
def nodes():
    """A head without CPUs (the driver's node) and three worker nodes of 1 CPU (a learner, two rollout actors); a fourth
    is the spare a lost node's work moves to (nodes cannot be added from the thread that removes one)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip("this process already runs on another Ray instance")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(4):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def remove_when(cluster, node, ready, log: list) -> threading.Thread:
    """Remove `node` (or the node `node()` names then) as a crash would, without a graceful drain, once `ready()`
    holds."""

    def remove():
        while not ready():
            time.sleep(0.05)
        log.append(time.monotonic())
        cluster.remove_node(node() if callable(node) else node, allow_graceful=False)

    thread = threading.Thread(target=remove, daemon=True)
    thread.start()
    return thread


def test_rollout_node_lost_mid_epoch_run_completes_with_exact_counts(nodes, tmp_path):
    from cluster.trainer import Trainer
    from rlcm.config.schema import load_config

    cluster = nodes
    config = load_config(None, [*FAST, "run.epochs=3", "resources.num_rollout_actors=2", "run.save_every=1"])
    trainer = Trainer(config, tmp_path)
    removed: list[float] = []
    # during epoch 2's sampling: after epoch 1's row, once batches are in flight again
    ready = lambda: len(trainer.out.rows()) == 1 and len(trainer.pool.inflight) > 0  # noqa: E731
    remove_when(cluster, lambda: node_of("RolloutActor", cluster, besides="Learner"), ready, removed)
    try:
        rows = trainer.run()
    finally:
        trainer.shutdown()
    assert removed, "the node was never removed"
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["samples_seen"] for r in rows] == [32, 64, 96] and all(r["num_invalid"] == 0 for r in rows)
    # every batch whose actor failed while sampling it was sampled again (those that had landed, Ray rebuilt from
    # lineage)
    assert rows[-1]["resampled_batches"] >= rows[-1]["rollout_failures"] >= 1
    figures(rows)


def figures(rows: list[dict], extra: str = "") -> None:
    """The counters the README's table quotes."""
    last = rows[-1]
    print(
        f"\nnode-loss figures{extra}: epochs {len(rows)}, samples_seen {[r['samples_seen'] for r in rows]}, "
        f"rollout_failures {last['rollout_failures']}, resampled_batches {last['resampled_batches']}, reward_retries "
        f"{last['reward_retries']}, epoch s {[round(r['time_epoch_s'], 1) for r in rows]}",
        file=sys.__stdout__,
        flush=True,
    )


def nodes_of(actor_class: str, cluster) -> list:
    """The cluster nodes on which live actors of `actor_class` run."""
    from ray._private.state import actors

    node_ids = {
        a["Address"]["NodeID"]
        for a in actors().values()
        if a["ActorClassName"] == actor_class and a["State"] == "ALIVE"
    }
    return [n for n in cluster.list_all_nodes() if n.node_id in node_ids]


def node_of(actor_class: str, cluster, besides: str | None = None):
    """A node running `actor_class` (and no `besides` actor)."""
    taken = {n.node_id for n in nodes_of(besides, cluster)} if besides else set()
    found = [n for n in nodes_of(actor_class, cluster) if n.node_id not in taken]
    assert found, f"no node runs only a {actor_class}"
    return found[0]


def lora(path):
    from safetensors.torch import load_file

    return load_file(str(path / "pytorch_lora_weights.safetensors"))


@pytest.mark.parametrize("preset", [None, "rocm-tiny-cpu"], ids=["rlcm", "rocm"])
def test_learner_node_lost_group_rebuilt_from_checkpoint_and_final_lora_equal(nodes, tmp_path, capsys, preset):
    """Sync mode: the learner's node disappears after epoch 0's checkpoint; the driver rebuilds the learners from it on
    the spare node and the final LoRA equals an uninterrupted run's, bit for bit (RLCM and ROCM)."""
    import torch

    from cluster.restarts import run_with_restarts
    from rlcm.config.schema import load_config

    cluster = nodes
    config = load_config(preset, [*FAST, "run.epochs=3", "resources.num_rollout_actors=2", "run.save_every=1"])
    straight = run_with_restarts(config, tmp_path / "straight")
    removed: list[float] = []
    first = tmp_path / "lost" / "checkpoints" / "epoch-0000"
    thread = remove_when(cluster, lambda: node_of("Learner", cluster), first.is_dir, removed)
    rows = run_with_restarts(config, tmp_path / "lost")
    thread.join()
    assert removed, "the node was never removed"
    err = capsys.readouterr().err
    assert "rlcm: a learner died" in err
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    per_epoch = straight[0]["samples_seen"]
    assert (
        [r["samples_seen"] for r in rows] == [r["samples_seen"] for r in straight] == [per_epoch * k for k in (1, 2, 3)]
    )
    a, b = lora(tmp_path / "straight/checkpoints/epoch-0002"), lora(tmp_path / "lost/checkpoints/epoch-0002")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    figures(rows, f" ({preset or 'rlcm'}; learner restarts {err.count('rlcm: a learner died')})")


def replica_nodes(deployment: str, cluster) -> list:
    """The cluster nodes on which live Serve replicas of `deployment` run."""
    from ray._private.state import actors

    node_ids = {
        a["Address"]["NodeID"]
        for a in actors().values()
        if a["ActorClassName"].endswith(f":{deployment}") and a["State"] == "ALIVE"
    }
    return [n for n in cluster.list_all_nodes() if n.node_id in node_ids]


def test_reward_replica_node_lost_scoring_retried_on_replacement(nodes, tmp_path):
    """The node of the only reward replica (Serve backend) disappears while it scores a batch: Serve starts a
    replacement on the nodes left, the lost call is retried on it, and every sample of every epoch enters the loss with
    its reward."""
    from ray import serve

    from cluster.trainer import Trainer
    from rewards_service.serve import RewardDeploymentConfig, RewardServiceConfig, run_service
    from rewards_service.settings import ServiceSettings
    from rlcm.config.schema import load_config
    from tests.servers import free_port

    cluster = nodes
    # a scorer that takes a second per batch, so the node goes while a call is in flight
    service = RewardServiceConfig(
        app_name="rewards_node_loss",
        settings=ServiceSettings(port=free_port(), auth_token=None),
        rewards=[
            RewardDeploymentConfig(
                name="slow", scorer="tests.test_rewards_serve:SlowJpeg", options={"delay_s": 1.0}, num_cpus=0.5
            )
        ],
    )
    run_service(service)
    try:
        serve_backend = [
            *FAST,
            "resources.num_rollout_actors=1",
            "run.save_every=1",
            "reward.backend=serve",
            "reward.name=slow",
            "reward.app_name=rewards_node_loss",
        ]
        trainer = Trainer(
            load_config(None, [*serve_backend, "run.epochs=3", "reward.timeout_s=120"]), tmp_path / "lost"
        )
        before = replica_nodes("slow", cluster)
        removed: list[float] = []
        # during epoch 2: once a batch's scoring call has been in flight for a moment
        ready = lambda: len(trainer.out.rows()) == 1 and len(trainer.rewards_pending) > 0  # noqa: E731
        remove_when(cluster, lambda: replica_nodes("slow", cluster)[0], ready, removed)
        try:
            rows = trainer.run()
        finally:
            trainer.shutdown()
        after = replica_nodes("slow", cluster)
        stalled, waited = replica_never_back(
            cluster, load_config(None, [*serve_backend, "reward.timeout_s=15"]), tmp_path / "never"
        )
    finally:
        serve.delete(service.app_name)
    assert removed, "the node was never removed"
    assert len(before) == len(after) == 1 and before[0].node_id != after[0].node_id, (
        "Serve did not replace the replica elsewhere"
    )
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["samples_seen"] for r in rows] == [16, 32, 48] and all(r["num_invalid"] == 0 for r in rows)
    assert rows[0]["reward_retries"] == 0 and rows[-1]["reward_retries"] >= 1  # the lost call was sent again
    figures(rows, f" (reward node; no room for a replacement: stopped after {waited:.0f} s)")
    print(f"node-loss stop line: {stalled}", file=sys.__stdout__, flush=True)
    # then no node has room for another replacement: one line naming the deployment and reward.timeout_s, soon after it
    assert "Serve deployment 'slow'" in stalled and "reward.timeout_s" in stalled and "\n" not in stalled
    assert waited < 15 + 30


def replica_never_back(cluster, config, output_dir) -> tuple[str, float]:
    """A new run starts, every CPU left elsewhere is taken, and the replica's node goes too: Serve has nowhere to put a
    replacement, so the run must stop with one clear line after reward.timeout_s (15 s). Returns it and the wait."""
    from cluster.trainer import Trainer
    from cluster.watchdog import StalledError

    trainer = Trainer(config, output_dir)
    ballast = hold_free_cpus(besides=replica_nodes("slow", cluster)[0].node_id)
    removed: list[float] = []
    remove_when(cluster, lambda: replica_nodes("slow", cluster)[0], lambda: len(trainer.rewards_pending) > 0, removed)
    try:
        with pytest.raises(StalledError) as raised:
            trainer.run()
    finally:
        trainer.shutdown()
        for actor in ballast:
            ray.kill(actor)
    assert removed, "the node was never removed"
    return str(raised.value), time.monotonic() - removed[0]


def hold_free_cpus(besides: str) -> list:
    """Actors that take every free CPU of every node but `besides`, so that a replica lost there has nowhere to go."""
    from ray._private.state import available_resources_per_node
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote
    class Ballast:
        pass

    held = [
        Ballast.options(
            num_cpus=free["CPU"], scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote()
        for node, free in available_resources_per_node().items()
        if node != besides and free.get("CPU", 0) > 0
    ]
    ray.get([actor.__ray_ready__.remote() for actor in held])
    return held
