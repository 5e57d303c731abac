"""Ray Serve application: one deployment per reward (own resources, optional @serve.batch) and a FastAPI ingress."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from rewards_service.app import create_app
from rewards_service.batching import score_merged
from rewards_service.registry import build_scorer
from rewards_service.scorers.base import ScoreResult, ScorerUnavailable, check_batch
from rewards_service.serve_config import RewardDeploymentConfig, RewardServiceConfig
from rewards_service.settings import ServiceSettings

__all__ = [
    "RewardDeploymentConfig",
    "RewardServiceConfig",
    "RewardDeployment",
    "RewardIngress",
    "build_app",
    "app_builder",
    "run_service",
]

INGRESS = "ingress"
logger = logging.getLogger("rewards_service")
GRPC_ALL_INTERFACES = "[::]:"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keep_replica_grpc_on(host: str) -> str | None:
    """Make this process's Serve replica bind its inter-deployment gRPC server to loopback when `host` is loopback.

    Ray binds that server to `[::]:0` (all interfaces) with no option to change it; nothing uses it unless
    RAY_SERVE_USE_GRPC_BY_DEFAULT=1. Called in the replica's constructor, which runs before Ray starts the server.
    Returns None when done (or not needed), else why it could not be done (for a startup warning).
    """
    if not is_loopback(host):
        return None
    if os.environ.get("RAY_SERVE_USE_GRPC_BY_DEFAULT") == "1":
        return "RAY_SERVE_USE_GRPC_BY_DEFAULT=1 routes requests over it, possibly across nodes"
    try:
        from ray.serve._private import replica
    except ImportError as error:
        return f"this Ray has no ray.serve._private.replica ({error})"
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        return "this Ray version binds it in a way rlcm does not know"
    if getattr(bind, "rlcm_loopback", False):
        return None
    loopback = "[::1]" if ":" in host.strip("[]") else "127.0.0.1"

    def bind_loopback(server: Any, address: str) -> int:
        return bind(
            server,
            loopback + ":" + address[len(GRPC_ALL_INTERFACES) :]
            if address.startswith(GRPC_ALL_INTERFACES)
            else address,
        )

    bind_loopback.rlcm_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback
    return None


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30, graceful_shutdown_timeout_s=120)
class RewardDeployment:
    """Holds one scorer; `score` answers a batch, merging concurrent calls when batching is on."""

    def __init__(self, config: dict[str, Any], host: str = "127.0.0.1") -> None:
        keep_replica_grpc_on(host)
        cfg = RewardDeploymentConfig.model_validate(config)
        self.scorer = build_scorer(cfg.scorer or cfg.name, version=cfg.version, **cfg.options)
        self.batching = cfg.max_batch_size > 1
        self._score_batch.set_max_batch_size(cfg.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def get_version(self) -> str:
        return self.scorer.version

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(self, requests: list[tuple[np.ndarray, Sequence[str]]]) -> list[ScoreResult]:
        return await asyncio.to_thread(score_merged, self.scorer, requests)

    async def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        check_batch(images, prompts)
        if self.batching:
            return await self._score_batch((images, list(prompts)))
        return await asyncio.to_thread(self.scorer.score, images, list(prompts))


UNAVAILABLE = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)


class RemoteScorer:
    """An async scorer backed by a reward deployment handle (what the ingress routes to).

    The scorer's own ValueError comes back as itself (a 422); a replica that is gone or overloaded
    becomes ScorerUnavailable (a 503).
    """

    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name, self.handle = name, handle

    async def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        try:
            return await self.handle.score.remote(images, list(prompts))
        except RayTaskError as exc:
            if isinstance(exc.cause, ValueError):
                raise exc.cause from None
            raise
        except UNAVAILABLE as exc:
            raise ScorerUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def get_version(self) -> str:
        return await self.handle.get_version.remote()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, health_check_period_s=10)
@serve.ingress()
class RewardIngress:
    """FastAPI ingress: the HTTP API of rewards_service.app, routing by reward name to the deployments.

    It takes up to settings.max_ongoing_requests requests at once, of which uploads in progress may hold
    settings.upload_share (the upload furthest behind min_upload_bytes_per_s is cut off first), so slow or
    stalled clients cannot block /healthz or anyone else.
    """

    def __init__(self, settings: dict[str, Any], handles: dict[str, DeploymentHandle]) -> None:
        self.settings = ServiceSettings.model_validate(settings)
        keep_replica_grpc_on(self.settings.host)
        self.scorers = {name: RemoteScorer(name, h) for name, h in handles.items()}

    def __serve_build_asgi_app__(self):
        return create_app(self.scorers, self.settings, requests_at_once=self.settings.max_ongoing_requests)


def build_app(config: RewardServiceConfig):
    """The Serve application graph of `config` (bind, not run)."""
    handles = {}
    for r in config.rewards:
        deployment = RewardDeployment.options(
            name=r.name,
            num_replicas=r.num_replicas,
            max_ongoing_requests=r.max_ongoing_requests,
            ray_actor_options={"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
        )
        handles[r.name] = deployment.bind(r.model_dump(), config.settings.host)
    settings = config.settings.model_dump()
    settings["auth_token"] = config.settings.auth_token.get_secret_value() if config.settings.auth_token else None
    return RewardIngress.options(name=INGRESS, max_ongoing_requests=config.settings.max_ongoing_requests).bind(
        settings, handles
    )


def app_builder(args: dict[str, Any]):
    """Entry point of `serve deploy` / `serve run` configs: import_path rewards_service.serve:app_builder."""
    return build_app(RewardServiceConfig.model_validate(args))


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _without_log(logger_name: str, text: str) -> Iterator[None]:
    log, drop = logging.getLogger(logger_name), _DropMessage(text)
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def run_service(config: RewardServiceConfig, blocking: bool = False) -> DeploymentHandle:
    """Start Serve's HTTP proxy on settings.host:port and deploy (or redeploy: hot swap) the application.

    With a loopback host every socket Serve opens for this app is on loopback, except where Ray does not
    allow it: then a warning says which.
    """
    settings = config.settings
    problem = keep_replica_grpc_on(settings.host)
    if problem:
        logger.warning(
            "Serve replicas' internal gRPC servers listen on all interfaces ([::]), not %s: %s; "
            "firewall their ports if this machine is reachable from untrusted networks",
            settings.host,
            problem,
        )
    serve.start(
        http_options={
            "host": settings.host,
            "port": settings.port,
            "keep_alive_timeout_s": settings.keep_alive_timeout_s,
        }
    )
    # serve.run connects to the Serve instance started just above and says its options "will not be applied": they were
    with _without_log("ray.serve", "will not be applied"):
        return serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix, blocking=blocking)
