"""A toy training run that scores through the Ray Serve reward service, with a hot swap mid-run."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ray import serve

from cluster.restarts import train
from rewards_service.scorers.base import ScoreResult
from rewards_service.serve import RewardDeploymentConfig, RewardServiceConfig, build_app
from rlcm.config.schema import load_config
from tests.test_rewards_serve import SlowJpeg, _wait_for

pytestmark = pytest.mark.slow  # end-to-end runs

APP = "train_rewards"
HELD = "tests.test_training_service:HeldJpeg"
EPOCH = 16  # samples an epoch


class HeldJpeg(SlowJpeg):
    """SlowJpeg that, once it has scored `hold_after` samples, touches <gate>/held and holds each further call
    until <gate>/release exists."""

    def __init__(self, delay_s: float, gate: str, hold_after: int) -> None:
        super().__init__(delay_s)
        self.gate, self.hold_after, self.scored = Path(gate), hold_after, 0

    def score(self, images, prompts) -> ScoreResult:
        if self.scored >= self.hold_after:
            (self.gate / "held").touch()
            _wait_for((self.gate / "release").exists, "the release of a held call")
        self.scored += len(prompts)
        return super().score(images, prompts)


def _deploy(version: str, options: dict) -> None:
    config = RewardServiceConfig(
        app_name=APP,
        rewards=[
            RewardDeploymentConfig(
                name="jpeg_compressibility", scorer=HELD, version=version, options=options, num_cpus=0.25
            )
        ],
    )
    serve.run(build_app(config), name=APP, route_prefix=f"/{APP}")


def _draining() -> bool:
    """True while a replica of the previous version stops (it takes no new requests)."""
    replicas = serve.status().applications[APP].deployments["jpeg_compressibility"].replica_states
    return replicas.get("STOPPING", 0) > 0


def test_training_scores_through_serve_and_survives_a_hot_swap(ray_local, tmp_path):
    """Version 1 holds its calls after two epochs until version 2 replaces it, so the swap lands mid-run."""
    gate, run = tmp_path / "gate", tmp_path / "run"
    gate.mkdir()
    _deploy("1", {"delay_s": 0.3, "gate": str(gate), "hold_after": 2 * EPOCH})
    config = load_config(
        "tiny-cpu",
        [
            "run.epochs=5",
            "reward.backend=serve",
            f"reward.app_name={APP}",
            "sampling.batch_size=4",
            f"sampling.batches_per_epoch={EPOCH // 4}",
        ],
    )
    done = threading.Event()
    thread = threading.Thread(target=lambda: (train(config, run), done.set()), daemon=True)
    thread.start()
    _wait_for((gate / "held").exists, "a scoring call after two epochs", within_s=300)
    with ThreadPoolExecutor(1) as pool:
        swap = pool.submit(_deploy, "2", {"delay_s": 0.3, "gate": str(gate), "hold_after": 10**9})
        _wait_for(lambda: swap.done() or _draining(), "the swap", within_s=120)
        (gate / "release").touch()
        swap.result(timeout=120)
    thread.join(timeout=300)
    serve.delete(APP)
    assert done.is_set(), "training did not finish"

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(5))
    assert [r["samples_seen"] for r in rows] == [EPOCH * (i + 1) for i in range(5)]
    assert all(r["num_invalid"] == 0 for r in rows)
    versions = [r["reward_version"] for r in rows]
    assert all("," not in v for v in versions), f"a PPO batch mixed reward versions: {versions}"
    assert versions[0] == "1" and versions[-1] == "2", versions
    assert versions == sorted(versions)
