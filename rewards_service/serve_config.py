"""Typed configuration of the reward service: HTTP settings and one entry per reward deployment."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewards_service.settings import ServiceSettings


class RewardDeploymentConfig(BaseModel):
    """One reward deployment: which scorer, its version, and its resources."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="reward name: the URL path and the deployment name")
    scorer: str | None = Field(None, description="registry name or 'module:Class'; defaults to name")
    options: dict[str, Any] = Field(default_factory=dict, description="scorer constructor options")
    version: str | None = Field(None, description="reported with every score; change it to hot-swap")
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="a fraction shares a GPU (aesthetic), 1 gives one GPU (llava)")
    max_batch_size: int = Field(1, ge=1, description=">1 merges concurrent requests with @serve.batch")
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_ongoing_requests: int = Field(16, ge=1)


class RewardServiceConfig(BaseModel):
    """The whole reward service: HTTP settings and the reward deployments."""

    model_config = ConfigDict(extra="forbid")
    app_name: str = "rewards"
    route_prefix: str = "/"
    settings: ServiceSettings = Field(default_factory=ServiceSettings)
    rewards: list[RewardDeploymentConfig] = Field(min_length=1)


DEFAULT_CONFIG = RewardServiceConfig(
    rewards=[
        RewardDeploymentConfig(name="jpeg_compressibility", num_cpus=0.5),
        RewardDeploymentConfig(name="jpeg_incompressibility", num_cpus=0.5),
    ]
)
"""What `rlcm rewards serve` runs without --config: the JPEG rewards, small enough for a 2-core laptop."""
