"""Ray Serve app on the shared local Ray: scoring through a handle and over HTTP, batching, hot swap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve

from rewards_service.client import HttpRewardClient, RetryPolicy, ServeHandleRewardClient
from rewards_service.codec import encode_batch, encode_png
from rewards_service.scorers.base import ScoreResult
from rewards_service.scorers.jpeg import JpegCompressibility, jpeg_size_kb
from rewards_service.serve import RemoteScorer, RewardDeploymentConfig, RewardServiceConfig, run_service
from rewards_service.settings import ServiceSettings
from tests.servers import free_port
from tests.test_rewards_hardening import b64, check_stalled_uploads_do_not_block, png_bytes

pytestmark = pytest.mark.slow  # end-to-end runs

APP = "rewards_test"
SLOW = "tests.test_rewards_serve:SlowJpeg"


HOLD = "hold:"


def _wait_for(condition: Callable[[], bool], what: str, within_s: float = 60) -> None:
    """Poll `condition` until it holds; the deadline guards against a hang."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        time.sleep(0.05)


class SlowJpeg(JpegCompressibility):
    """JPEG compressibility that sleeps `delay_s` per call and records how many samples each call merged. A prompt
    `hold:<folder>` holds its call: it touches <folder>/started, then waits for <folder>/release."""

    name = "slow_jpeg"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def score(self, images, prompts) -> ScoreResult:
        started = time.time()
        for gate in (Path(p.removeprefix(HOLD)) for p in prompts if p.startswith(HOLD)):
            (gate / "started").touch()
            _wait_for((gate / "release").exists, "the release of a held call")
        time.sleep(self.delay_s)
        result = super().score(images, prompts)
        n = len(prompts)
        result.details.update(merged=[n] * n, started=[started] * n, finished=[time.time()] * n)
        return result


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _config(port: int, slow_version: str, delay_s: float) -> RewardServiceConfig:
    return RewardServiceConfig(
        app_name=APP,
        settings=ServiceSettings(port=port, auth_token=None, max_images_per_request=8, body_timeout_s=5),
        rewards=[
            RewardDeploymentConfig(name="jpeg_compressibility", num_replicas=2, num_cpus=0.25),
            RewardDeploymentConfig(
                name="slow",
                scorer=SLOW,
                version=slow_version,
                options={"delay_s": delay_s},
                num_cpus=0.25,
                max_batch_size=8,
                batch_wait_timeout_s=0.2,
            ),
        ],
    )


@pytest.fixture(scope="module")
def service(ray_local):
    port = free_port()
    run_service(_config(port, "1", 2.0))
    yield port
    serve.delete(APP)


def test_handle_scores_a_batch(service):
    images = _images(4)
    client = ServeHandleRewardClient(
        serve.get_deployment_handle("jpeg_compressibility", app_name=APP), "jpeg_compressibility"
    )
    result = client.score(images, list("abcd"))
    assert result.rewards == JpegCompressibility().score(images, list("abcd")).rewards and result.version == "1"


def test_http_scores_a_batch_and_lists(service):
    base = f"http://127.0.0.1:{service}"
    images = _images(3, seed=1)
    response = httpx.post(
        f"{base}/v1/score/jpeg_compressibility",
        json={"prompts": list("abc"), "images": encode_batch(images)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["rewards"] == JpegCompressibility().score(images, list("abc")).rewards
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    listed = {r["name"]: r["version"] for r in httpx.get(f"{base}/v1/rewards").json()["rewards"]}
    assert listed == {
        "jpeg_compressibility": "1",
        "slow": "1",
    }  # as deployed; test_hot_swap_mid_stream (later) makes slow "2"
    bad = httpx.post(f"{base}/v1/score/nope", json={"prompts": ["a"], "images": encode_batch(images[:1])})
    assert bad.status_code == 404 and "unknown reward" in bad.json()["detail"]
    result = HttpRewardClient(base, "jpeg_compressibility", retry=RetryPolicy(max_attempts=1)).score(
        images, list("abc")
    )
    assert result.rewards == response.json()["rewards"]


def test_http_errors_through_serve(service):
    """Mixed sizes and a scorer's ValueError cross the handle; an oversized side is a 413, never a 500."""
    base = f"http://127.0.0.1:{service}"
    images = [_images(1, size=s, seed=s)[0] for s in (8, 16, 8)]
    mixed = httpx.post(
        f"{base}/v1/score/jpeg_compressibility",
        json={"prompts": list("abc"), "images": [encode_png(im) for im in images]},
        timeout=30,
    )
    assert mixed.status_code == 200 and mixed.json()["rewards"] == [-jpeg_size_kb(im) for im in images]
    tall = httpx.post(
        f"{base}/v1/score/jpeg_compressibility",
        json={"prompts": ["a"], "images": [b64(png_bytes(1, 65501))]},
        timeout=30,
    )
    assert tall.status_code == 413 and "1x65501" in tall.json()["detail"]
    handle = RemoteScorer("jpeg_compressibility", serve.get_deployment_handle("jpeg_compressibility", APP))
    with pytest.raises(ValueError, match="2 images but 1 prompts") as raised:
        asyncio.run(handle.score(_images(2), ["a"]))
    assert type(raised.value) is ValueError  # the scorer's own error, not Ray's wrapper with a traceback


def test_stalled_uploads_do_not_block_serve(service):
    """More stalled uploads than Serve's default max_ongoing_requests (5): /healthz and scoring still answer."""
    check_stalled_uploads_do_not_block(f"http://127.0.0.1:{service}", service, n=8)


def test_batching_merges_concurrent_requests(service):
    client = ServeHandleRewardClient(serve.get_deployment_handle("slow", app_name=APP), "slow", max_concurrency=4)
    batches = [_images(n, size=16 + 8 * (n % 2), seed=n) for n in (1, 2, 3, 4)]
    results = [client.result(f) for f in [client.submit(b, ["p"] * len(b)) for b in batches]]
    for batch, result in zip(batches, results):
        assert result.rewards == JpegCompressibility().score(batch, ["p"] * len(batch)).rewards
    assert max(r.details["merged"][0] for r in results) > max(
        len(b) for b in batches if b.shape[1] == batches[0].shape[1]
    )


def test_hot_swap_mid_stream(service, tmp_path):
    """A request held in version 1 until the swap to version 2 is under way is answered by version 1."""
    client = ServeHandleRewardClient(serve.get_deployment_handle("slow", app_name=APP), "slow", max_concurrency=4)
    before = client.submit(_images(2), ["a", f"{HOLD}{tmp_path}"])
    _wait_for((tmp_path / "started").exists, "the held request's start")
    swap_started = time.time()
    with ThreadPoolExecutor(1) as pool:
        redeploy = pool.submit(run_service, _config(service, "2", 0.1))
        in_flight = [client.submit(_images(1, seed=i), ["x"]) for i in range(3)]
        _wait_for(lambda: redeploy.done() or serve.status().applications[APP].status == "DEPLOYING", "the swap")
        (tmp_path / "release").touch()
        redeploy.result(timeout=120)
    old = client.result(before)
    assert old.version == "1" and old.valid == [True, True]
    assert old.details["started"][0] < swap_started < old.details["finished"][0], (
        "the request was not in flight during the swap"
    )
    mixed = [client.result(f) for f in in_flight]
    assert all(r.valid == [True] and r.version in {"1", "2"} for r in mixed)
    after = client.score(_images(2), ["a", "b"])
    assert after.version == "2" and after.valid == [True, True]
    listed = httpx.get(f"http://127.0.0.1:{service}/v1/rewards").json()["rewards"]
    assert {r["name"]: r["version"] for r in listed}["slow"] == "2"
    rescored = client.score(_images(2), ["a", "b"])  # what the driver does with a stale batch: its images again
    assert rescored.version == "2" and rescored.rewards == old.rewards
