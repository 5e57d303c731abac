"""Reward clients for rollout actors: submit now, join later; timeouts, bounded retries, invalid on failure."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from rewards_service.scorers.base import FAILED_VERSION, Scorer, ScoreResult, check_batch
from rewards_service.settings import TOKEN_ENV


class RetryPolicy(BaseModel):
    """Per-attempt timeout and bounded retries with exponential backoff."""

    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(120.0, gt=0, description="per attempt (HTTP and Serve); the whole call for result()")
    max_attempts: int = Field(3, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    backoff_factor: float = Field(2.0, ge=1)
    max_backoff_s: float = Field(10.0, ge=0)

    def delay(self, attempt: int) -> float:
        """Sleep before retry number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** (attempt - 1))


class PermanentError(Exception):
    """A failure that retrying cannot fix (the request itself is wrong); a scorer's ValueError is one too."""


class RewardUnavailable(RuntimeError):
    """No live Serve replica answered within the client's `replica_wait_s`: raised, never made into invalid samples."""


class RewardAuthError(PermissionError):
    """The reward service refused the bearer token (HTTP 401/403): raised, never turned into invalid samples."""


@dataclass
class RewardFuture:
    """A pending score of `n` samples."""

    future: cf.Future
    n: int

    def done(self) -> bool:
        return self.future.done()


class RewardClient(ABC):
    """Common interface: `submit` returns at once, `result` joins; failed samples come back with valid=False."""

    def __init__(self, reward: str, retry: RetryPolicy | None = None, max_concurrency: int = 4) -> None:
        self.reward = reward
        self.retry = retry or RetryPolicy()
        self._pool = cf.ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"reward-{reward}")

    @abstractmethod
    def _score_once(self, images: np.ndarray, prompts: list[str]) -> ScoreResult:
        """One attempt; raise PermanentError for mistakes that retrying cannot fix."""

    def _score_with_retries(self, images: np.ndarray, prompts: list[str]) -> ScoreResult:
        errors = []
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                result = self._score_once(images, prompts)
                result.details["attempts"] = [attempt] * len(prompts)
                return result
            except (RewardAuthError, RewardUnavailable):
                raise
            except (PermanentError, ValueError) as exc:  # the request is wrong: retrying gives the same answer
                errors.append(f"{type(exc).__name__}: {exc}" if isinstance(exc, ValueError) else str(exc))
                break
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if attempt < self.retry.max_attempts:
                    time.sleep(self.retry.delay(attempt))
        result = ScoreResult.failed(
            len(prompts), FAILED_VERSION, f"{self.reward} failed after {len(errors)} attempt(s): {errors[-1]}"
        )
        result.details["attempts"] = [len(errors)] * len(prompts)
        return result

    def submit(self, images: np.ndarray, prompts: Sequence[str]) -> RewardFuture:
        """Start scoring a uint8 [B, H, W, 3] batch in the background; returns at once."""
        check_batch(images, prompts)
        return RewardFuture(self._pool.submit(self._score_with_retries, images, list(prompts)), len(prompts))

    def result(self, future: RewardFuture, timeout: float | None = None) -> ScoreResult:
        """Wait for a submitted batch; on timeout every sample is invalid (never 0 or NaN silently).

        Raises RewardAuthError if the service refused the token: no retry or later batch can succeed.
        """
        try:
            return future.future.result(
                timeout=self.retry.timeout_s * self.retry.max_attempts if timeout is None else timeout
            )
        except cf.TimeoutError:
            return ScoreResult.failed(future.n, FAILED_VERSION, f"{self.reward} timed out after {timeout}s")

    def score(self, images: np.ndarray, prompts: Sequence[str], timeout: float | None = None) -> ScoreResult:
        """Blocking submit + result."""
        return self.result(self.submit(images, prompts), timeout)

    async def ascore(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        """asyncio equivalent of submit + result."""
        return await asyncio.wrap_future(self.submit(images, prompts).future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class InProcessRewardClient(RewardClient):
    """Wraps a Scorer; scoring runs in a thread pool so sampling is not blocked."""

    def __init__(self, scorer: Scorer, retry: RetryPolicy | None = None, max_concurrency: int = 1) -> None:
        super().__init__(scorer.name, retry, max_concurrency)
        self.scorer = scorer

    def _score_once(self, images: np.ndarray, prompts: list[str]) -> ScoreResult:
        return self.scorer.score(images, prompts)


class ServeHandleRewardClient(RewardClient):
    """Calls a reward deployment through a Serve DeploymentHandle (inside Ray: no HTTP)."""

    def __init__(
        self,
        handle: Any,
        reward: str,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        replica_wait_s: float | None = None,
        wait_key: str = "retry.timeout_s",
    ) -> None:
        """`replica_wait_s` (default: retry.timeout_s) bounds how long one attempt waits for a live replica;
        `wait_key` names the setting in the error that ends the wait."""
        super().__init__(reward, retry, max_concurrency)
        self.handle = handle
        self.replica_wait_s, self.wait_key = replica_wait_s or self.retry.timeout_s, wait_key

    @classmethod
    def connect(cls, reward: str, app_name: str = "rewards", **kwargs: Any) -> ServeHandleRewardClient:
        """Client for the deployment of `reward` in the running Serve application `app_name`."""
        from ray import serve

        return cls(serve.get_deployment_handle(reward, app_name=app_name), reward, **kwargs)

    def _score_once(self, images: np.ndarray, prompts: list[str]) -> ScoreResult:
        """One attempt, which outlasts a lost replica: a call whose replica died (its node lost, OOM) or that found
        none is sent again, to a replacement once Serve has started one, until `replica_wait_s` have passed; then
        RewardUnavailable."""
        from ray.exceptions import GetTimeoutError, RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

        deadline, resent = time.monotonic() + self.replica_wait_s, 0
        while True:
            left = deadline - time.monotonic()
            try:
                result = self.handle.score.remote(images, prompts).result(
                    timeout_s=max(0.1, min(self.retry.timeout_s, left))
                )
                if resent:
                    result.details["replica_resends"] = [resent] * len(prompts)
                return result
            except (
                RayActorError,
                DeploymentUnavailableError,
                ReplicaUnavailableError,
                GetTimeoutError,
                TimeoutError,
            ) as exc:
                lost = not isinstance(exc, (GetTimeoutError, TimeoutError))
                if time.monotonic() >= deadline:
                    raise RewardUnavailable(
                        f"no live replica of Serve deployment {self.reward!r} answered within "
                        f"{self.replica_wait_s:g} s ({self.wait_key}); last: {type(exc).__name__}: "
                        f"{first_line(exc)}; check `serve status` and the nodes that can host the deployment"
                    ) from None
                if not lost:
                    raise  # a live replica that is just slow: an ordinary failed attempt
                resent += 1
                time.sleep(
                    min(self.retry.max_backoff_s, self.retry.delay(resent), max(0.0, deadline - time.monotonic()))
                )


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:200]


class HttpRewardClient(RewardClient):
    """Calls the HTTP API with httpx (base64 PNG on the wire); the token defaults to $RLCM_REWARDS_TOKEN."""

    def __init__(
        self,
        url: str,
        reward: str,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        http: Any = None,
    ) -> None:
        """`http` replaces the httpx.Client (e.g. a FastAPI TestClient); `url` is then ignored."""
        import httpx

        super().__init__(reward, retry, max_concurrency)
        self.url = url
        self.token_source = "the token argument" if token else (f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else None)
        token = token or os.environ.get(TOKEN_ENV) or None
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=self.retry.timeout_s)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _auth_error(self, status: int) -> RewardAuthError:
        sent = (
            f"the token from {self.token_source} was refused"
            if self.token_source
            else f"no token was sent (${TOKEN_ENV} is unset)"
        )
        return RewardAuthError(
            f"reward service {self.url} answered {status} for {self.reward!r}: {sent}; "
            f"set {TOKEN_ENV} (or the client's token) to the service's token"
        )

    def _score_once(self, images: np.ndarray, prompts: list[str]) -> ScoreResult:
        from rewards_service.app import response_to_result
        from rewards_service.codec import encode_batch

        response = self.http.post(
            f"/v1/score/{self.reward}", json={"prompts": prompts, "images": encode_batch(images)}, headers=self.headers
        )
        if response.status_code in (401, 403):
            raise self._auth_error(response.status_code)
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise PermanentError(f"HTTP {response.status_code}: {response.text}")
        response.raise_for_status()
        return response_to_result(response.json())

    def close(self) -> None:
        super().close()
        self.http.close()


class RewardClientConfig(BaseModel):
    """How a rollout actor reaches a reward: in process, through a Serve handle, or over HTTP."""

    model_config = ConfigDict(extra="forbid")
    reward: str = Field(description="reward name, e.g. jpeg_compressibility")
    backend: Literal["in_process", "serve", "http"] = "in_process"
    options: dict[str, Any] = Field(default_factory=dict, description="scorer options (in_process only)")
    app_name: str = Field("rewards", description="Serve application name (serve only)")
    url: str = Field("http://127.0.0.1:8000", description="base URL (http only)")
    token: SecretStr | None = Field(None, description="bearer token (http only); default $RLCM_REWARDS_TOKEN")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    max_concurrency: int = Field(4, ge=1)
    replica_wait_s: float | None = Field(
        None, gt=0, description="serve: how long a call waits for a live replica (default: retry.timeout_s)"
    )
    replica_wait_key: str = Field("retry.timeout_s", description="serve: the setting named when that wait runs out")


def build_reward_client(config: RewardClientConfig) -> RewardClient:
    """The client described by `config`."""
    common = {"retry": config.retry, "max_concurrency": config.max_concurrency}
    if config.backend == "in_process":
        from rewards_service.registry import build_scorer

        return InProcessRewardClient(build_scorer(config.reward, **config.options), **common)
    if config.backend == "serve":
        return ServeHandleRewardClient.connect(
            config.reward,
            config.app_name,
            replica_wait_s=config.replica_wait_s,
            wait_key=config.replica_wait_key,
            **common,
        )
    token = config.token.get_secret_value() if config.token else None
    return HttpRewardClient(config.url, config.reward, token, **common)
