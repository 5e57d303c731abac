"""The reward HTTP API (FastAPI): health, listing, and scoring by reward name, with limits and auth."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import ClientDisconnect

from rewards_service.batching import merge_results
from rewards_service.budget import BudgetBusy, PixelBudget
from rewards_service.codec import (
    PNG_BASE64_PATTERN,
    ImageError,
    ImageHeader,
    check_png_base64,
    decode_group,
    read_headers,
    size_groups,
)
from rewards_service.scorers.base import ScoreResult, ScorerUnavailable
from rewards_service.settings import ServiceSettings
from rewards_service.uploads import UploadSlots

RESERVED_KEYS = ("rewards", "version", "valid")
logger = logging.getLogger("rewards_service")


PNG_ITEM_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "pattern": PNG_BASE64_PATTERN,
    "contentEncoding": "base64",
    "contentMediaType": "image/png",
    "description": "a PNG file, base64-encoded (standard alphabet, padded): it starts with iVBORw0KGgo",
}


class ScoreRequest(BaseModel):
    """A batch to score: `prompts` and `images` have the same length (at least 1), one prompt per image.

    The service also enforces what JSON Schema cannot say: both arrays have the same length, every image is a
    decodable PNG, and its size (from its header) and the request's pixel total are within the limits.
    """

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1, description="one prompt per image: the same length as `images`")
    images: list[str] = Field(
        min_length=1,
        description="base64-encoded PNG images (sizes may differ): the same length as `prompts`",
        json_schema_extra={"items": PNG_ITEM_SCHEMA},
    )

    @field_validator("images")
    @classmethod
    def _base64_pngs(cls, images: list[str]) -> list[str]:
        for i, image in enumerate(images):
            check_png_base64(image, i)
        return images

    @model_validator(mode="after")
    def _one_prompt_per_image(self) -> ScoreRequest:
        if len(self.images) != len(self.prompts):
            raise ValueError(
                f"got {len(self.images)} images but {len(self.prompts)} prompts; send one prompt per image"
            )
        return self


class ScoreResponse(BaseModel):
    """Rewards (null where `valid` is false), the reward version, and per-sample details as extra keys."""

    model_config = ConfigDict(extra="allow")
    rewards: list[float | None]
    version: str
    valid: list[bool]


class RewardInfo(BaseModel):
    name: str
    version: str


class RewardList(BaseModel):
    rewards: list[RewardInfo]


class Health(BaseModel):
    status: str = "ok"


def _error(status: int, text: str) -> dict[str, Any]:
    return {status: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}}


ERRORS = {
    **_error(401, "missing or wrong bearer token"),
    **_error(404, "unknown reward"),
    **_error(
        408,
        "the request body did not arrive within body_timeout_s, came slower than min_upload_bytes_per_s after "
        "upload_grace_s, or was cut off to make room for others (the upload furthest behind that rate goes first)",
    ),
    **_error(
        413,
        "body, image count, image side, pixels of an image or of the request above the limits, or a decompression bomb",
    ),
    **_error(415, "content type is not application/json"),
    **_error(
        422,
        "malformed JSON, bad base64, non-PNG image, prompt/image count mismatch, or an image the reward cannot score",
    ),
    **_error(500, "the reward failed on a valid request (a server fault)"),
    **_error(
        503,
        "the reward is unavailable, the server's decoded-pixel budget is in use by other requests, or more than "
        "limit_concurrency requests are in progress; retry",
    ),
}


def request_schema(settings: ServiceSettings) -> dict[str, Any]:
    """JSON schema of ScoreRequest with this service's image-count limit as maxItems."""
    schema = ScoreRequest.model_json_schema()
    for field in ("prompts", "images"):
        schema["properties"][field]["maxItems"] = settings.max_images_per_request
    schema["description"] += (
        f" Limits of this service: at most {settings.max_images_per_request} images, each at most "
        f"{settings.max_image_side} pixels a side and {settings.max_pixels_per_image} pixels, "
        f"{settings.max_pixels_per_request} pixels in all, "
        f"a body of at most {settings.max_body_bytes} bytes."
    )
    return schema


async def call_scorer(scorer: Any, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
    """Score with a sync Scorer (in a worker thread) or an async one (awaited)."""
    if inspect.iscoroutinefunction(scorer.score):
        return await scorer.score(images, prompts)
    return await run_in_threadpool(scorer.score, images, prompts)


async def scorer_version(scorer: Any) -> str:
    """The current version of a scorer; remote scorers expose an async `get_version`."""
    get_version = getattr(scorer, "get_version", None)
    return await get_version() if get_version else scorer.version


def _nan_to_none(values: list[Any]) -> list[Any]:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def result_to_json(result: ScoreResult) -> dict[str, Any]:
    """ScoreResult -> response body (NaN -> null, details merged as top-level keys)."""
    clash = sorted(set(result.details) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"detail keys {clash} clash with the response fields {RESERVED_KEYS}")
    valid = [v and not math.isnan(r) for v, r in zip(result.valid, result.rewards)]
    body = {"rewards": _nan_to_none(result.rewards), "version": result.version, "valid": valid}
    body.update({k: _nan_to_none(list(v)) for k, v in result.details.items()})
    return body


def _validation_detail(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
    return "invalid request body: " + "; ".join(parts)


async def read_body(request: Request, settings: ServiceSettings, uploads: UploadSlots) -> bytes:
    """The request body: 413 above max_body_bytes; 408 (connection closed) if it comes too slowly or is cut off."""
    limit = settings.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(
            413, f"request body is {length} bytes, above the limit of {limit}; send fewer or smaller images"
        )
    chunks, size = [], 0
    try:
        async with uploads.receiving() as upload:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        413, f"request body is above the limit of {limit} bytes; send fewer or smaller images"
                    )
                chunks.append(chunk)
                uploads.received(upload, len(chunk))
    except TimeoutError:
        raise HTTPException(
            408, upload.why_stopped(asyncio.get_running_loop().time()), headers={"Connection": "close"}
        ) from None
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def parse_request(body: bytes, settings: ServiceSettings) -> tuple[ScoreRequest, list[ImageHeader]]:
    """Validate a request body and read every image's size from its PNG header (nothing is decoded yet)."""
    try:
        req = ScoreRequest.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(422, _validation_detail(exc)) from None
    if len(req.images) > settings.max_images_per_request:
        raise HTTPException(
            413,
            f"{len(req.images)} images in one request, above the limit of {settings.max_images_per_request}; split "
            "the batch",
        )
    try:
        headers = read_headers(req.images, settings.max_pixels_per_image, settings.max_image_side)
    except ImageError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    total = sum(h.pixels for h in headers)
    if total > settings.max_pixels_per_request:
        raise HTTPException(
            413,
            f"the {len(headers)} images hold {total} pixels in all, above the limit of "
            f"{settings.max_pixels_per_request} per request; send fewer or smaller images",
        )
    return req, headers


async def score_by_size(name: str, scorer: Any, req: ScoreRequest, headers: list[ImageHeader]) -> ScoreResult:
    """Decode and score one image size at a time, results in request order.

    Image errors -> 422/413; scorer errors -> 422 (the input), 503 (passing), 500.
    """
    parts = []
    for group in size_groups(headers):
        try:
            images = await run_in_threadpool(decode_group, req.images, group)  # decoding stays off the event loop
        except ImageError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        indices = [h.index for h in group]
        try:
            parts.append((indices, await call_scorer(scorer, images, [req.prompts[i] for i in indices])))
        except ValueError as exc:
            raise HTTPException(422, f"reward {name!r} cannot score these images: {exc}") from None
        except ScorerUnavailable as exc:
            raise HTTPException(503, f"reward {name!r} is unavailable: {exc}", headers={"Retry-After": "1"}) from None
        except Exception as exc:
            logger.exception("reward %r failed on a valid request", name)
            raise HTTPException(
                500,
                f"reward {name!r} failed on the server ({type(exc).__name__}: {str(exc)[:200]}); "
                "the request is valid: retry later or report it",
            ) from None
        del images
    try:
        return merge_results(parts, len(headers))
    except ScorerUnavailable as exc:
        raise HTTPException(503, f"reward {name!r} is unavailable: {exc}", headers={"Retry-After": "1"}) from None


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Any other unexpected exception: a JSON 500 that says it is a server fault."""
    return JSONResponse(
        {"detail": f"internal server error ({type(exc).__name__}); the request may be valid: retry later or report it"},
        status_code=500,
    )


def create_app(
    scorers: Mapping[str, Any], settings: ServiceSettings | None = None, requests_at_once: int | None = None
) -> FastAPI:
    """The reward API over `scorers` (name -> Scorer, sync or async `score`).

    `requests_at_once`: how many requests its server hands it at once (default settings.limit_concurrency);
    uploads in progress may take settings.upload_share of them.
    """
    settings = settings or ServiceSettings()
    scorers = dict(scorers)
    pixels = PixelBudget(settings.max_pixels_in_flight)
    uploads = UploadSlots(
        settings.max_uploads(requests_at_once or settings.limit_concurrency),
        settings.max_upload_bytes,
        settings.upload_grace_s,
        settings.min_upload_bytes_per_s,
        settings.body_timeout_s,
    )
    bearer = HTTPBearer(auto_error=False, description="required when the service has a token configured")

    def check_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if settings.auth_token is None:
            return
        expected = settings.auth_token.get_secret_value()
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="rlcm reward service",
        version="1",
        description="Rewards for RL fine-tuning of consistency models. Images travel as base64 PNG; no pickle.",
    )
    app.add_exception_handler(Exception, internal_error)

    @app.api_route("/healthz", methods=["GET", "HEAD"], response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/v1/rewards",
        response_model=RewardList,
        dependencies=[Depends(check_token)],
        responses=_error(401, "missing or wrong bearer token"),
        summary="List rewards and their versions",
    )
    async def list_rewards() -> RewardList:
        return RewardList(rewards=[RewardInfo(name=n, version=await scorer_version(s)) for n, s in scorers.items()])

    @app.post(
        "/v1/score/{name}",
        response_model=ScoreResponse,
        dependencies=[Depends(check_token)],
        responses=ERRORS,
        summary="Score a batch of images",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema(settings)}}}
        },
    )
    async def score(name: str, request: Request) -> JSONResponse:
        if name not in scorers:
            raise HTTPException(404, f"unknown reward {name!r}; available: {sorted(scorers)}")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPException(415, f"content type must be application/json, got {content_type or 'none'!r}")
        body = await read_body(request, settings, uploads)
        req, headers = await run_in_threadpool(parse_request, body, settings)
        del body
        try:
            async with pixels.reserve(sum(h.pixels for h in headers), settings.pixel_wait_s):
                result = await score_by_size(name, scorers[name], req, headers)
        except BudgetBusy as exc:
            raise HTTPException(
                503, f"the server is busy decoding other requests ({exc}); retry", headers={"Retry-After": "1"}
            ) from None
        return JSONResponse(result_to_json(result))

    return app


def response_to_result(body: Mapping[str, Any]) -> ScoreResult:
    """Response body -> ScoreResult (null rewards -> NaN, extra keys -> details)."""
    rewards = [float("nan") if r is None else float(r) for r in body["rewards"]]
    details = {k: v for k, v in body.items() if k not in RESERVED_KEYS}
    return ScoreResult(
        rewards=rewards,
        version=str(body["version"]),
        details=details,
        valid=list(body.get("valid") or [True] * len(rewards)),
    )


__all__ = [
    "create_app",
    "call_scorer",
    "scorer_version",
    "result_to_json",
    "response_to_result",
    "ScoreRequest",
    "ScoreResponse",
]
