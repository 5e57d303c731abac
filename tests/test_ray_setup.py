"""Which Ray cluster rlcm runs on (never one merely recorded in /tmp/ray), and resource pre-flight."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from cluster import ray_setup
from cluster.control import scale_rollouts, start_controller
from cluster.ray_setup import (
    Capacity,
    ResourceError,
    ResourceRequest,
    init_ray,
    preflight,
    shortages,
    wait_for_placement_group,
)

ROLLOUT_KEYS = ("resources.num_rollout_actors", "resources.rollout_cpus", "resources.rollout_gpus")
LEARNER_KEYS = ("resources.num_learners", "resources.learner_cpus", "resources.learner_gpus")


class InitCalled(Exception):
    pass


@pytest.fixture
def spy_init(monkeypatch):
    """Replace ray.init with a recorder that stops init_ray right there; pretend no Ray is running in this process."""
    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise InitCalled

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # keep the joining tests from switching this process to token auth
    return calls


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- which cluster ------------------------------------------------------------------------------


@pytest.mark.parametrize("ray_address", [None, ""])
def test_without_an_address_a_fresh_local_ray_starts(spy_init, monkeypatch, ray_address):
    if ray_address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    with pytest.raises(InitCalled):
        init_ray(num_cpus=2)
    assert spy_init[0]["address"] == "local" and spy_init[0]["num_cpus"] == 2


def test_address_local_means_local_even_with_ray_address(spy_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    with pytest.raises(InitCalled):
        init_ray("local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    assert spy_init[0]["address"] == "local" and spy_init[0]["log_to_driver"] is False
    # what "local" means to Ray: start a new instance, consult neither RAY_ADDRESS nor /tmp/ray/ray_current_cluster
    from ray._private.services import canonicalize_bootstrap_address

    assert canonicalize_bootstrap_address("local") is None


def test_ray_address_is_joined_without_local_sizes(spy_init, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        with pytest.raises(InitCalled):
            init_ray(num_cpus=4, num_gpus=1)
    assert spy_init[0]["address"] == address
    assert "num_cpus" not in spy_init[0] and "num_gpus" not in spy_init[0]  # Ray refuses them when joining


@pytest.mark.parametrize("explicit", [True, False])
def test_an_address_nobody_answers_fails_in_bounded_time_naming_it(spy_init, monkeypatch, explicit):
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", "" if explicit else address)
    with pytest.raises(ConnectionError, match=address) as error:
        init_ray(address if explicit else None, connect_timeout_s=1.0)
    assert ("--address" if explicit else "RAY_ADDRESS") in str(error.value)
    assert not spy_init


def test_a_dashboard_url_is_refused_with_what_to_pass_instead(spy_init):
    with pytest.raises(ValueError, match="6379"):
        init_ray("http://127.0.0.1:8265", connect_timeout_s=1.0)
    assert not spy_init


@pytest.mark.slow
def test_a_dead_cluster_recorded_in_the_ray_temp_dir_is_not_joined():
    """What hung `rlcm train`: a stale /tmp/ray/ray_current_cluster. Here in a temp dir of its own (RAY_TMPDIR)."""
    temp = Path(f"/tmp/rlcm-rec-{os.getpid()}")  # short: Ray's socket paths have a length limit
    (temp / "ray").mkdir(parents=True, exist_ok=True)
    port = closed_port()
    (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(temp)}
    script = (
        "from ray._private.services import canonicalize_bootstrap_address\n"
        "print('ray.init() would join', canonicalize_bootstrap_address(None))\n"
        "from cluster.ray_setup import init_ray\n"
        "print(init_ray(num_cpus=1, include_dashboard=False))\n"
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    would_join, result = run.stdout.strip().splitlines()[-2:]
    assert would_join.endswith(f":{port}"), run.stderr[-2000:]
    assert result.startswith("started local Ray (1 CPUs, 0 GPUs) on 127.0.0.1, address 127.0.0.1:"), run.stderr[-2000:]


def test_the_session_ray_is_local_and_bound_to_loopback(ray_local):
    import psutil
    from ray._private import ray_constants

    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray_setup.started_here()
    node = ray._private.worker._global_node
    for kind in (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET):
        pid = node.all_processes[kind][0].process.pid
        listening = {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, (kind, listening)


def test_scale_needs_an_address_when_not_attached(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="--address"):
        scale_rollouts("/tmp/some-run", 2)


# ---- resources ----------------------------------------------------------------------------------


def rollouts(count: int, cpus: float = 1.0, gpus: float = 0.0) -> ResourceRequest:
    return ResourceRequest("rollout actors", count, cpus, gpus, ROLLOUT_KEYS)


def learners(count: int = 1, cpus: float = 1.0, gpus: float = 0.0, strategy: str = "PACK") -> ResourceRequest:
    return ResourceRequest("learners", count, cpus, gpus, LEARNER_KEYS, strategy)


CPU4 = Capacity({"CPU": 4.0, "GPU": 0.0}, [{"CPU": 4.0, "GPU": 0.0}], "the local Ray")


def test_a_run_that_fits_has_no_shortage():
    assert (
        shortages([rollouts(2), learners(1), ResourceRequest("reward tasks", 1, 0.25, keys=("reward.num_cpus",))], CPU4)
        == []
    )


def test_too_many_cpus_names_the_cpu_keys_only():
    (problem,) = shortages([rollouts(4, cpus=2.0), learners(1)], CPU4)
    assert "CPU: 9 asked" in problem and "has 4" in problem
    assert (
        "resources.rollout_cpus" in problem
        and "resources.learner_cpus" in problem
        and "resources.num_rollout_actors" in problem
    )
    assert "gpus" not in problem


def test_a_gpu_on_a_cpu_only_cluster_names_the_gpu_key():
    (problem,) = shortages([rollouts(1, gpus=1.0), learners(1)], CPU4)
    assert "GPU: 1 asked" in problem and "resources.rollout_gpus" in problem
    assert "resources.rollout_cpus" not in problem and "learner" not in problem


def test_bundles_must_fit_on_one_node_each():
    two_nodes = Capacity({"CPU": 16.0, "GPU": 2.0}, [{"CPU": 8.0, "GPU": 1.0}] * 2, "the cluster")
    (problem,) = shortages([learners(1, gpus=2.0)], two_nodes)  # 2 GPUs in total, but not on one node
    assert "learners" in problem and "resources.learner_gpus" in problem and "learner_cpus" not in problem
    assert shortages([learners(2, gpus=1.0, strategy="STRICT_SPREAD")], two_nodes) == []
    (problem,) = shortages([learners(2, gpus=1.0, strategy="STRICT_PACK")], two_nodes)
    assert "scaleout.placement_strategy" in problem
    assert shortages([learners(3, cpus=1.0, strategy="STRICT_SPREAD")], two_nodes)


def test_a_cluster_that_may_grow_gets_a_warning_not_an_error(capsys):
    preflight([rollouts(8, gpus=1.0)], Capacity({"CPU": 4.0, "GPU": 0.0}, source="the Ray cluster now", can_grow=True))
    assert "resources.rollout_gpus" in capsys.readouterr().err
    with pytest.raises(ResourceError, match="resources.rollout_gpus"):
        preflight([rollouts(8, gpus=1.0)], Capacity({"CPU": 4.0, "GPU": 0.0}))


def test_preflight_against_the_session_ray(ray_local):
    capacity = ray_setup.cluster_capacity()
    assert capacity.totals == {"CPU": 4.0, "GPU": 0.0} and not capacity.can_grow
    preflight([rollouts(2), learners(1)])
    with pytest.raises(ResourceError, match="resources.rollout_cpus"):
        preflight([rollouts(4, cpus=2.0)])
    with pytest.raises(ResourceError, match="resources.rollout_gpus"):
        preflight([rollouts(1, gpus=1.0)])


def test_a_placement_group_that_cannot_be_placed_times_out_with_the_keys(ray_local, capsys):
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    pg = placement_group([{"CPU": 0.5}])
    wait_for_placement_group(pg, timeout_s=60, what="rollout actor 0", keys=ROLLOUT_KEYS)
    remove_placement_group(pg)
    pg = placement_group([{"CPU": 1.0}] * 5)  # 5 CPUs on a 4-CPU Ray
    with pytest.raises(ResourceError, match="resources.rollout_cpus") as error:
        wait_for_placement_group(pg, timeout_s=1.0, what="learners", keys=ROLLOUT_KEYS, warn_after_s=0.5)
    assert "learners" in str(error.value) and "waiting for Ray to place learners" in capsys.readouterr().err
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_the_controller_refuses_a_target_that_cannot_fit(ray_local, tmp_path):
    controller = start_controller(tmp_path, 1, per_actor=rollouts(1), fixed=(learners(1),), capacity=CPU4)
    try:
        assert ray.get(controller.set_rollout_actors.remote(3)) == 3
        with pytest.raises(ResourceError, match="resources.num_rollout_actors"):
            ray.get(controller.set_rollout_actors.remote(4))
        assert ray.get(controller.rollout_actors.remote()) == 3
    finally:
        ray.kill(controller)
