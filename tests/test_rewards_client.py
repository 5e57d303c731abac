"""Reward clients: non-blocking submit, timeouts, bounded retries, failed samples invalid."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rewards_service.app import create_app
from rewards_service.client import (
    HttpRewardClient,
    InProcessRewardClient,
    RetryPolicy,
    RewardAuthError,
    RewardClientConfig,
    build_reward_client,
)
from rewards_service.scorers.base import ScoreResult
from rewards_service.scorers.jpeg import JpegCompressibility
from rewards_service.settings import ServiceSettings

FAST_RETRY = RetryPolicy(timeout_s=5, max_attempts=3, backoff_s=0.01)


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


class Flaky:
    """Fails the first `failures` calls, then scores 1.0; can block until released."""

    name, version = "flaky", "1"

    def __init__(self, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.failures, self.calls, self.gate = failures, 0, gate

    def score(self, images, prompts) -> ScoreResult:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.calls <= self.failures:
            raise RuntimeError(f"transient failure {self.calls}")
        return ScoreResult([1.0] * len(prompts), self.version)


def test_submit_does_not_block_and_result_joins():
    gate = threading.Event()
    client = InProcessRewardClient(Flaky(gate=gate), retry=FAST_RETRY)
    start = time.perf_counter()
    future = client.submit(_images(), ["a", "b"])
    # a hang, not speed: a submit that waited for the scorer would wait on the gate (10 s), not return in ms
    assert time.perf_counter() - start < 5 and not future.done()
    gate.set()
    assert client.result(future, timeout=5).rewards == [1.0, 1.0]


def test_retries_then_succeeds():
    scorer = Flaky(failures=2)
    result = InProcessRewardClient(scorer, retry=FAST_RETRY).score(_images(), ["a", "b"])
    assert result.valid == [True, True] and scorer.calls == 3


def test_exhausted_retries_mark_samples_invalid():
    scorer = Flaky(failures=10)
    result = InProcessRewardClient(scorer, retry=FAST_RETRY).score(_images(), ["a", "b"])
    assert scorer.calls == 3 and result.valid == [False, False] and result.num_invalid == 2
    assert all(np.isnan(result.rewards)) and "transient failure 3" in result.details["error"][0]
    assert result.details["attempts"] == [3, 3]


def test_timeout_marks_samples_invalid():
    gate = threading.Event()
    client = InProcessRewardClient(Flaky(gate=gate), retry=FAST_RETRY)
    result = client.result(client.submit(_images(), ["a", "b"]), timeout=0.1)
    gate.set()
    assert result.valid == [False, False] and "timed out" in result.details["error"][0]


def test_submit_rejects_malformed_batch():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        InProcessRewardClient(JpegCompressibility()).submit(_images(), ["a"])


def test_ascore():
    client = InProcessRewardClient(JpegCompressibility())
    result = asyncio.run(client.ascore(_images(), ["a", "b"]))
    assert result.rewards == JpegCompressibility().score(_images(), ["a", "b"]).rewards


def _http_client(scorer, **kwargs) -> HttpRewardClient:
    app = create_app({scorer.name: scorer}, ServiceSettings(auth_token="tok", max_images_per_request=4))
    return HttpRewardClient(
        "http://unused",
        scorer.name,
        token="tok",
        retry=FAST_RETRY,
        http=TestClient(app, raise_server_exceptions=False),
        **kwargs,
    )


def test_http_client_scores_exactly():
    result = _http_client(JpegCompressibility()).score(_images(), ["a", "b"])
    assert result.rewards == JpegCompressibility().score(_images(), ["a", "b"]).rewards and result.version == "1"


def test_http_client_retries_server_errors():
    scorer = Flaky(failures=1)
    assert _http_client(scorer).score(_images(), ["a", "b"]).valid == [True, True] and scorer.calls == 2


def test_http_client_does_not_retry_client_errors():
    result = _http_client(JpegCompressibility()).score(np.zeros((5, 8, 8, 3), np.uint8), ["a"] * 5)
    assert (
        result.valid == [False] * 5
        and "HTTP 413" in result.details["error"][0]
        and result.details["attempts"] == [1] * 5
    )


def test_build_reward_client_in_process():
    client = build_reward_client(RewardClientConfig(reward="jpeg_compressibility", options={"version": "5"}))
    assert isinstance(client, InProcessRewardClient) and client.score(_images(), ["a", "b"]).version == "5"


def _token_app_client(monkeypatch, env_token: str | None, token: str | None = None) -> HttpRewardClient:
    if env_token is None:
        monkeypatch.delenv("RLCM_REWARDS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("RLCM_REWARDS_TOKEN", env_token)
    app = create_app({"jpeg_compressibility": JpegCompressibility()}, ServiceSettings(auth_token="tok"))
    return HttpRewardClient("http://svc", "jpeg_compressibility", token=token, retry=FAST_RETRY, http=TestClient(app))


def test_http_client_reads_the_token_from_the_environment(monkeypatch):
    assert _token_app_client(monkeypatch, "tok").score(_images(), ["a", "b"]).valid == [True, True]


@pytest.mark.parametrize(
    "env_token, token, says",
    [
        (None, None, "no token was sent ($RLCM_REWARDS_TOKEN is unset)"),
        ("wrong", None, "the token from $RLCM_REWARDS_TOKEN was refused"),
        ("tok", "wrong", "the token from the token argument was refused"),
    ],
    ids=["unset", "wrong-env", "wrong-argument"],
)
def test_http_client_raises_on_401_naming_the_token(monkeypatch, env_token, token, says):
    """A refused token is an error that says what to set, not NaN rewards with valid=False."""
    client = _token_app_client(monkeypatch, env_token, token)
    with pytest.raises(RewardAuthError, match="answered 401") as error:
        client.score(_images(), ["a", "b"])
    assert says in str(error.value) and "set RLCM_REWARDS_TOKEN" in str(error.value)


class LostReplicaHandle:
    """A Serve DeploymentHandle whose first `lost` calls fail as a call to a replica lost with its node does."""

    def __init__(self, lost: int) -> None:
        self.lost, self.calls = lost, 0
        self.score = self

    def remote(self, images, prompts):
        self.calls += 1
        return self

    def result(self, timeout_s: float):
        from ray.exceptions import ActorDiedError

        if self.calls <= self.lost:
            raise ActorDiedError()
        return ScoreResult([1.0, 1.0], "1")


def test_serve_call_whose_replica_was_lost_is_resent_to_the_replacement():
    """Two calls land on a dead replica; the third reaches the replacement: valid rewards within one attempt, resends
    counted."""
    from rewards_service.client import ServeHandleRewardClient

    handle = LostReplicaHandle(lost=2)
    client = ServeHandleRewardClient(handle, "jpeg", RetryPolicy(max_attempts=1, backoff_s=0.01), replica_wait_s=30)
    result = client.score(_images(), ["a", "b"])
    assert result.valid == [True, True] and result.rewards == [1.0, 1.0] and handle.calls == 3
    assert result.details["replica_resends"] == [2, 2] and result.details["attempts"] == [1, 1]


def test_serve_replica_that_never_comes_back_ends_in_one_clear_error():
    from rewards_service.client import RewardUnavailable, ServeHandleRewardClient

    client = ServeHandleRewardClient(
        LostReplicaHandle(lost=10**9),
        "jpeg",
        RetryPolicy(max_attempts=3, backoff_s=0.05),
        replica_wait_s=0.3,
        wait_key="reward.timeout_s",
    )
    started = time.monotonic()
    with pytest.raises(RewardUnavailable) as raised:
        client.score(_images(), ["a", "b"])
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "no live replica of Serve deployment 'jpeg' answered within 0.3 s (reward.timeout_s)" in message
    assert "ActorDiedError: The actor died unexpectedly" in message and "\n" not in message
