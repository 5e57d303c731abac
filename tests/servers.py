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
