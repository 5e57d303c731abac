"""Typed settings of the HTTP API: request limits, timeouts, auth token, bind address."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from rewards_service.scorers.jpeg import JPEG_MAX_SIDE

TOKEN_ENV = "RLCM_REWARDS_TOKEN"


def _token_from_env() -> SecretStr | None:
    token = os.environ.get(TOKEN_ENV)
    return SecretStr(token) if token else None


class ServiceSettings(BaseModel):
    """Limits, timeouts and auth of the reward HTTP API; the token defaults to $RLCM_REWARDS_TOKEN (unset = no auth)."""

    model_config = ConfigDict(extra="forbid")

    max_images_per_request: int = Field(64, ge=1, description="more images in one request -> 413")
    max_pixels_per_image: int = Field(1024 * 1024, ge=1, description="width*height above this -> 413 (read from the PNG header)")
    max_image_side: int = Field(4096, ge=1, le=JPEG_MAX_SIDE,
                                description="width or height above this -> 413 (read from the PNG header); at most 65500, the JPEG limit")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="larger request bodies -> 413")
    body_timeout_s: float = Field(30.0, gt=0, description="the whole request body must arrive within this many seconds, else 408")
    keep_alive_timeout_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this many seconds")
    limit_concurrency: int = Field(256, ge=1, description="standalone: more open connections than this -> 503")
    max_ongoing_requests: int = Field(256, ge=1, description="Serve: requests the ingress replica works on at once (stalled uploads count)")
    auth_token: SecretStr | None = Field(default_factory=_token_from_env, description="bearer token; None disables auth")
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535)
