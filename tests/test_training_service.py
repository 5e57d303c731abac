"""A toy training run that scores through the Ray Serve reward service, with a hot swap mid-run."""

from __future__ import annotations

import json
import threading
import time

import pytest
from ray import serve

from cluster.restarts import train
from rewards_service.serve import RewardDeploymentConfig, RewardServiceConfig, build_app
from rlcm.config.schema import load_config

APP = "train_rewards"
SLOW = "tests.test_rewards_serve:SlowJpeg"


def _deploy(version: str) -> None:
    config = RewardServiceConfig(
        app_name=APP,
        rewards=[
            RewardDeploymentConfig(
                name="jpeg_compressibility", scorer=SLOW, version=version, options={"delay_s": 0.3}, num_cpus=0.25
            )
        ],
    )
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")


@pytest.mark.slow
def test_training_scores_through_serve_and_survives_a_hot_swap(ray_local, tmp_path):
    _deploy("1")
    config = load_config(
        "tiny-cpu",
        [
            "run.epochs=5",
            "reward.backend=serve",
            f"reward.app_name={APP}",
            "sampling.batch_size=4",
            "sampling.batches_per_epoch=4",
        ],
    )
    metrics = tmp_path / "metrics.jsonl"
    done = threading.Event()
    thread = threading.Thread(target=lambda: (train(config, tmp_path), done.set()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    _deploy("2")
    thread.join(timeout=300)
    serve.delete(APP)
    assert done.is_set(), "training did not finish"

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(5))
    assert [r["samples_seen"] for r in rows] == [16 * (i + 1) for i in range(5)]
    assert all(r["num_invalid"] == 0 for r in rows)
    versions = [r["reward_version"] for r in rows]
    assert all("," not in v for v in versions), f"a PPO batch mixed reward versions: {versions}"
    assert versions[0] == "1" and versions[-1] == "2", versions
    assert versions == sorted(versions)
