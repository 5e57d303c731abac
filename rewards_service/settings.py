"""Typed settings of the HTTP API: request limits, timeouts, auth token, bind address."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from rewards_service.scorers.jpeg import JPEG_MAX_SIDE

TOKEN_ENV = "RLCM_REWARDS_TOKEN"


def _token_from_env() -> SecretStr | None:
    token = os.environ.get(TOKEN_ENV)
    return SecretStr(token) if token else None


class ServiceSettings(BaseModel):
    """Limits, timeouts and auth of the reward HTTP API; the token defaults to $RLCM_REWARDS_TOKEN (unset = no auth)."""

    model_config = ConfigDict(extra="forbid")

    max_images_per_request: int = Field(64, ge=1, description="more images in one request -> 413")
    max_pixels_per_image: int = Field(
        1024 * 1024, ge=1, description="width*height above this -> 413 (read from the PNG header)"
    )
    max_image_side: int = Field(
        4096,
        ge=1,
        le=JPEG_MAX_SIDE,
        description="width or height above this -> 413 (read from the PNG header); at most 65500, the JPEG limit",
    )
    max_pixels_per_request: int = Field(
        64 * 512 * 512,
        ge=1,
        description="sum of width*height over a request's images above this -> 413 (read from the PNG headers); "
        "decoded RGB memory of one request is at most 3 bytes per pixel of it",
    )
    max_pixels_in_flight: int = Field(
        4 * 64 * 512 * 512,
        ge=1,
        description="decoded pixels of all requests being scored at once (per server or Serve ingress replica); "
        "a request that does not fit waits up to pixel_wait_s, then 503",
    )
    pixel_wait_s: float = Field(
        10.0, ge=0, description="how long a request may wait for room under max_pixels_in_flight before a 503"
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="larger request bodies -> 413")
    body_timeout_s: float = Field(
        30.0, gt=0, description="the whole request body must arrive within this many seconds, else 408"
    )
    upload_grace_s: float = Field(
        5.0, gt=0, description="a request body may take this long before min_upload_bytes_per_s applies"
    )
    min_upload_bytes_per_s: float = Field(
        16384,
        gt=0,
        description="after upload_grace_s, a body must keep arriving at this many bytes/s on average "
        "(each that many bytes buy one more second), else 408 and the connection is closed",
    )
    upload_share: float = Field(
        0.75,
        gt=0,
        lt=1,
        description="share of limit_concurrency (standalone) or max_ongoing_requests (Serve) that "
        "uploads in progress may hold; the rest is reserved for requests whose body has "
        "arrived. One more cuts off the upload furthest behind the rate (408)",
    )
    max_upload_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="bytes of all bodies being received at once (per server or Serve ingress "
        "replica); above it the upload furthest behind the rate is cut off (408)",
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="idle keep-alive connections are closed after this many seconds"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="standalone: a connection must send a complete request head within this many seconds "
        "of opening (or of its last response), else it is closed",
    )
    max_connections_per_client: int = Field(
        32,
        ge=1,
        description="standalone: open connections per client address; a new one closes the client's oldest idle one",
    )
    limit_concurrency: int = Field(
        256,
        ge=2,
        description="standalone: open connections; a new one closes the oldest idle one; "
        "a request while more than this many are in progress -> 503",
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Serve: requests the ingress replica works on at once (stalled uploads count)"
    )
    auth_token: SecretStr | None = Field(
        default_factory=_token_from_env, description="bearer token; None disables auth"
    )
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535)

    @model_validator(mode="after")
    def _limits_fit_together(self) -> ServiceSettings:
        if self.max_pixels_in_flight < self.max_pixels_per_request:
            raise ValueError(
                f"max_pixels_in_flight ({self.max_pixels_in_flight}) must be at least max_pixels_per_request "
                f"({self.max_pixels_per_request}), or a request within the limits could never be scored"
            )
        for key in ("limit_concurrency", "max_ongoing_requests"):
            if self.max_uploads(getattr(self, key)) < 1:
                raise ValueError(
                    f"upload_share ({self.upload_share}) x {key} ({getattr(self, key)}) leaves no room for an upload; "
                    f"raise upload_share or {key}"
                )
        if self.max_upload_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_upload_bytes ({self.max_upload_bytes}) must be at least max_body_bytes ({self.max_body_bytes}), "
                "or a body within the limit could never be received"
            )
        return self

    def max_uploads(self, requests_at_once: int) -> int:
        """Uploads that may be in progress at once on a server taking `requests_at_once` requests."""
        return int(self.upload_share * requests_at_once)
