"""Upload bounds (rewards_service.uploads) and the server layer's JSON errors, in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from rewards_service.app import create_app
from rewards_service.guard import guarded_protocol
from rewards_service.settings import ServiceSettings
from rewards_service.uploads import Upload, UploadSlots
from tests.servers import free_port


def test_deadline_is_grace_plus_bytes_over_rate_capped_at_the_timeout():
    upload = Upload(started=100.0, grace_s=5.0, min_rate=1000.0, timeout_s=30.0)
    assert upload.deadline() == 105.0
    upload.bytes = 12_000
    assert upload.deadline() == 100.0 + 5.0 + 12.0
    upload.bytes = 10**9
    assert upload.deadline() == 130.0


def test_settings_refuse_bounds_that_leave_no_room():
    with pytest.raises(ValidationError, match=r"upload_share \(0.4\) x limit_concurrency \(2\) leaves no room"):
        ServiceSettings(limit_concurrency=2, upload_share=0.4)
    with pytest.raises(ValidationError, match=r"max_upload_bytes \(10\) must be at least max_body_bytes \(100\)"):
        ServiceSettings(max_body_bytes=100, max_upload_bytes=10)
    with pytest.raises(ValidationError, match="upload_share"):
        ServiceSettings(upload_share=1.0)
    assert ServiceSettings().max_uploads(256) == 192


async def _hold(slots: UploadSlots, chunks: list[int], release: asyncio.Event) -> str:
    """An upload that receives `chunks` bytes, then waits for `release`; returns "done" or why it was stopped."""
    try:
        async with slots.receiving() as upload:
            for n in chunks:
                slots.received(upload, n)
            await release.wait()
        return "done"
    except TimeoutError:
        return upload.why_stopped(asyncio.get_running_loop().time())


def test_the_upload_furthest_behind_is_cut_off_first_when_the_slots_are_full():
    async def run() -> list[str]:
        slots, release = (
            UploadSlots(max_uploads=2, max_upload_bytes=10**6, grace_s=60, min_rate=10_000, timeout_s=120),
            asyncio.Event(),
        )
        stalled = asyncio.create_task(_hold(slots, [10], release))  # deadline t0 + 60.001
        await asyncio.sleep(0.05)
        steady = asyncio.create_task(_hold(slots, [500_000], release))  # deadline t1 + 110
        await asyncio.sleep(0.05)
        newcomer = asyncio.create_task(
            _hold(slots, [], release)
        )  # the third, deadline t2 + 60 (t2 >= t0 + 0.1): one must go
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(stalled, steady, newcomer)

    stalled, steady, newcomer = asyncio.run(run())
    assert (
        "cut off this upload to make room: 3 uploads were in progress, above the 2 that upload_share allows" in stalled
    )
    assert (steady, newcomer) == ("done", "done")


def test_bytes_in_flight_are_bounded_by_cutting_off_the_upload_furthest_behind():
    async def run() -> list[str]:
        slots, release = (
            UploadSlots(max_uploads=8, max_upload_bytes=1000, grace_s=60, min_rate=100, timeout_s=120),
            asyncio.Event(),
        )
        slow = asyncio.create_task(_hold(slots, [400], release))
        await asyncio.sleep(0.01)
        fast = asyncio.create_task(_hold(slots, [300, 300, 300], release))  # 1300 bytes in flight: one goes
        await asyncio.sleep(0.05)
        assert slots.bytes_in_flight == 900
        release.set()
        return await asyncio.gather(slow, fast)

    slow, fast = asyncio.run(run())
    assert "held 1300 bytes, above max_upload_bytes (1000)" in slow and fast == "done"


def test_a_stalled_upload_is_stopped_after_the_grace_and_a_steady_one_is_not():
    async def run() -> tuple[str, str]:
        slots = UploadSlots(max_uploads=8, max_upload_bytes=10**6, grace_s=0.2, min_rate=1000, timeout_s=60)
        stalled = asyncio.create_task(_hold(slots, [10], asyncio.Event()))

        async def steady() -> str:  # 50 s of credit every 0.1 s
            async with slots.receiving() as upload:
                for _ in range(10):
                    slots.received(upload, 50_000)
                    await asyncio.sleep(0.1)
            return "done"

        return await asyncio.wait_for(asyncio.gather(stalled, steady()), 30)

    stalled, steady = asyncio.run(run())
    assert (
        stalled.startswith("the request body arrived too slowly: 10 bytes in")
        and "below 1000 bytes/s after the first 0.2 s" in stalled
    )
    assert steady == "done"


def test_healthz_answers_head_and_other_methods_get_a_json_405():
    client = TestClient(create_app({}))
    assert client.head("/healthz").status_code == 200
    wrong = client.put("/healthz")
    assert wrong.status_code == 405 and wrong.json() == {"detail": "Method Not Allowed"}


async def _slow(request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("s", "0")))
    return JSONResponse({"ok": True})


@contextlib.contextmanager
def _guarded_server(settings: ServiceSettings):
    """A tiny app (GET /slow?s=seconds) behind the guarded protocol, in a thread; yields its port."""
    port = free_port()
    app = Starlette(routes=[Route("/slow", _slow)])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=guarded_protocol(settings), log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_server_layer_errors_are_json():
    """A request above limit_concurrency in progress gets a JSON 503, an unparsable one a JSON 400 (uvicorn: plain
    text)."""
    with _guarded_server(ServiceSettings(limit_concurrency=2)) as port:
        base = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(httpx.get, f"{base}/slow?s=3", timeout=30) for _ in range(2)]
            time.sleep(0.5)
            over = httpx.get(f"{base}/slow", timeout=30)
            assert [f.result().status_code for f in busy] == [200, 200]
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert "limit of 2 requests in progress (limit_concurrency)" in over.json()["detail"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
        assert "invalid HTTP request" in json.loads(body)["detail"]
