"""Typed settings of the HTTP API: request limits, auth token, bind address."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr

TOKEN_ENV = "RLCM_REWARDS_TOKEN"


def _token_from_env() -> SecretStr | None:
    token = os.environ.get(TOKEN_ENV)
    return SecretStr(token) if token else None


class ServiceSettings(BaseModel):
    """Limits and auth of the reward HTTP API; the token defaults to $RLCM_REWARDS_TOKEN (unset = no auth)."""

    model_config = ConfigDict(extra="forbid")

    max_images_per_request: int = Field(64, ge=1, description="more images in one request -> 413")
    max_pixels_per_image: int = Field(1024 * 1024, ge=1, description="width*height above this -> 413")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="larger request bodies -> 413")
    auth_token: SecretStr | None = Field(default_factory=_token_from_env, description="bearer token; None disables auth")
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535)
