"""The labelling page's HTTP app (FastAPI): the page, the next pair to judge, and judgements, behind a token.

The token travels as `Authorization: Bearer <token>` (as the reward service's) or as `?token=` in the URL, so the
address `rlcm label` prints opens the page directly. Every bad request is a 4xx with `{"detail": "..."}`.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import secrets
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from rlcm.runs.judgements import PAIR_ID_PATTERN, AlreadyJudged, Choice, JudgementStore, Pair, StalePair, UnknownPair

TOKEN_ENV = "RLCM_LABEL_TOKEN"
LABELLER_PATTERN = r"^[\w .@+-]{1,64}$"
MAX_BODY_BYTES = 4096
logger = logging.getLogger(__name__)


def token_from_env() -> SecretStr | None:
    token = os.environ.get(TOKEN_ENV)
    return SecretStr(token) if token else None


class LabelSettings(BaseModel):
    """The page's token (None: no auth, for tests and trusted loopback use only)."""

    model_config = ConfigDict(extra="forbid")
    token: SecretStr | None = Field(default_factory=token_from_env, description=f"default ${TOKEN_ENV}")


class JudgementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair_id: str = Field(pattern=PAIR_ID_PATTERN, description="the id /api/next gave (32 hex digits)")
    choice: Choice = Field(description="a (left), b (right), tie or skip")
    labeller: str = Field(pattern=LABELLER_PATTERN, description="who judged: letters, digits, space, . @ + - _")


class StatusResponse(BaseModel):
    policy_version: int = Field(description="the trainer's current policy version")
    min_version: int | None = Field(description="the oldest policy version still judged (None: no bound)")
    queue_length: int = Field(description="fresh pairs waiting (for this labeller if one is named)")
    judgements: int
    dropped: int
    labeller_agreement: float | None = Field(
        description="share of the repeated pairs (judged by more than one labeller, skips aside) judged alike"
    )
    repeated_pairs: int = Field(description="pairs judged by more than one labeller (skips aside)")


class PairResponse(BaseModel):
    pair_id: str
    prompt: str
    seeds: tuple[int, int]
    policy_version: int
    image_a: str = Field(description="data: URL of the left image (PNG)")
    image_b: str = Field(description="data: URL of the right image (PNG)")


class NextResponse(BaseModel):
    pair: PairResponse | None = Field(description="None when nothing waits for this labeller")
    status: StatusResponse


class JudgementResponse(BaseModel):
    id: int
    pair_id: str
    choice: Choice
    labeller: str
    policy_version: int


def _error(status: int, text: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}}


AUTH_ERRORS = {**_error(401, "no token sent"), **_error(403, "wrong token")}
JUDGE_ERRORS = {
    **AUTH_ERRORS,
    **_error(404, "no pair has this id"),
    **_error(409, "this labeller has judged this pair already; nothing was stored"),
    **_error(410, "the pair is older than the staleness bound or was dropped; nothing was stored"),
    **_error(422, "malformed body: bad pair id, choice or labeller name"),
}


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pair_response(pair: Pair) -> PairResponse:
    return PairResponse(
        pair_id=pair.pair_id,
        prompt=pair.prompt,
        seeds=pair.seeds,
        policy_version=pair.policy_version,
        image_a=_data_url(pair.image_a),
        image_b=_data_url(pair.image_b),
    )


def _status(store: JudgementStore, labeller: str | None) -> StatusResponse:
    status = store.status(labeller)
    return StatusResponse(
        policy_version=status.policy_version,
        min_version=status.min_version,
        queue_length=status.queue_length,
        judgements=status.judgements,
        dropped=status.dropped,
        labeller_agreement=None if math.isnan(status.labeller_agreement) else status.labeller_agreement,
        repeated_pairs=status.repeated_pairs,
    )


async def read_small_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES (a judgement is a few dozen bytes)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body is {length} bytes; a judgement is at most {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body is above {MAX_BODY_BYTES} bytes; a judgement is far smaller")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_judgement(body: bytes) -> JudgementRequest:
    """The body as a JudgementRequest; 422 naming each bad field."""
    try:
        return JudgementRequest.model_validate_json(body)
    except ValidationError as error:
        raise HTTPException(422, "invalid judgement: " + _fields(error.errors())) from None


def page_html() -> str:
    return resources.files("rlcm.labelling").joinpath("page.html").read_text(encoding="utf-8")


def _fields(errors: Any) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one line naming each bad parameter (FastAPI's default is a list the page cannot show)."""
    return JSONResponse({"detail": "invalid request: " + _fields(exc.errors())}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("labelling page: %s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_app(store: JudgementStore, settings: LabelSettings | None = None) -> FastAPI:
    """The labelling app over `store` (its staleness bound decides which pairs are still judged)."""
    settings = settings or LabelSettings()
    bearer = HTTPBearer(auto_error=False, description="the page's token (or ?token= in the URL)")

    def check_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
        token: str | None = Query(None, description="the page's token, when not sent as a bearer header"),
    ) -> None:
        if settings.token is None:
            return
        sent = credentials.credentials if credentials else token
        if not sent:
            raise HTTPException(
                401,
                "no token sent; open the address `rlcm label` printed (it ends in ?token=...) or send "
                "'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(sent.encode(), settings.token.get_secret_value().encode()):
            raise HTTPException(403, "wrong token; ask whoever started `rlcm label` for the page's address")

    app = FastAPI(
        title="rlcm labelling page",
        version="1",
        description="Judge pairs of images of one prompt; the judgements train a preference algorithm (D3PO).",
    )
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    guarded = [Depends(check_token)]

    @app.get("/", response_class=HTMLResponse, summary="The labelling page")
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})

    @app.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status", response_model=StatusResponse, dependencies=guarded, responses=AUTH_ERRORS)
    async def status(labeller: str | None = Query(None, pattern=LABELLER_PATTERN)) -> StatusResponse:
        return await run_in_threadpool(_status, store, labeller)

    @app.get("/api/next", response_model=NextResponse, dependencies=guarded, responses=AUTH_ERRORS)
    async def next_pair(labeller: str = Query(pattern=LABELLER_PATTERN)) -> NextResponse:
        pair = await run_in_threadpool(store.next_unjudged, labeller)
        return NextResponse(
            pair=_pair_response(pair) if pair else None, status=await run_in_threadpool(_status, store, labeller)
        )

    @app.get("/api/pairs/{pair_id}", response_model=PairResponse, dependencies=guarded, responses=JUDGE_ERRORS)
    async def get_pair(pair_id: str = Path(pattern=PAIR_ID_PATTERN)) -> PairResponse:
        try:
            return _pair_response(await run_in_threadpool(store.pair, pair_id))
        except UnknownPair as error:
            raise HTTPException(404, str(error)) from None

    @app.post(
        "/api/judgements",
        status_code=201,
        response_model=JudgementResponse,
        dependencies=guarded,
        responses=JUDGE_ERRORS,
        summary="Store one labeller's choice for a pair",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": JudgementRequest.model_json_schema()}},
            }
        },
    )
    async def judge(request: Request) -> JudgementResponse:
        body = parse_judgement(await read_small_body(request))
        try:
            stored = await run_in_threadpool(store.record, body.pair_id, body.choice, body.labeller)
        except UnknownPair as error:
            raise HTTPException(404, str(error)) from None
        except AlreadyJudged as error:
            raise HTTPException(409, str(error)) from None
        except StalePair as error:
            raise HTTPException(410, str(error)) from None
        return JudgementResponse(
            id=stored.id,
            pair_id=stored.pair_id,
            choice=stored.choice,
            labeller=stored.labeller,
            policy_version=stored.policy_version,
        )

    return app
