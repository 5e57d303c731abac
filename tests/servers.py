"""Test helpers for servers on 127.0.0.1: a free port, the standalone reward service in a subprocess."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standalone_service(
    config: Path | None = None, wait_s: float = 15.0, pids: list[int] | None = None
) -> Iterator[tuple[str, int]]:
    """`rlcm rewards serve --standalone` (uvicorn, no Ray) on a free port; yields (base URL, port) once /healthz
    answers.

    `pids`, if given, gets the server's process id (e.g. to read its memory).
    """
    port = free_port()
    code = (
        f"from rewards_service.cli import serve_main; serve_main({str(config) if config else None!r}, True, "
        f"'127.0.0.1', {port})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base, port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def failing_service(after: int, wait_s: float = 15.0) -> Iterator[str]:
    """The reward app (jpeg_compressibility) under uvicorn in a thread, answering 503 to every score request after the
    first `after`; yields its base URL."""
    import threading

    import uvicorn
    from fastapi.responses import JSONResponse

    from rewards_service.app import create_app
    from rewards_service.registry import build_scorer

    app = create_app({"jpeg_compressibility": build_scorer("jpeg_compressibility")})
    scored = 0

    @app.middleware("http")
    async def fail_after(request, call_next):
        nonlocal scored
        if request.url.path.startswith("/v1/score/"):
            scored += 1
            if scored > after:
                return JSONResponse({"detail": f"injected failure of request {scored}"}, status_code=503)
        return await call_next(request)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + wait_s
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
