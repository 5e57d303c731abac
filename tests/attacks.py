"""Hostile clients on loopback for tests and benchmarks: stalled uploads from many source addresses, and a
well-behaved client that times its scores meanwhile."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import httpx
import numpy as np

from rewards_service.codec import encode_png

SCORE_PATH = "/v1/score/jpeg_compressibility"


def stalled_upload_head(token: str | None, body_bytes: int = 100_000) -> bytes:
    """A complete, authorized POST head announcing `body_bytes`, and the first 10 bytes of the body."""
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    return (
        (
            f"POST {SCORE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_bytes}\r\n"
        ).encode()
        + auth
        + b'\r\n{"prompts"'
    )


def open_stalled_uploads(port: int, sources: int, per_source: int, token: str | None) -> list[socket.socket]:
    """`sources` x `per_source` connections from 127.0.9.1, 127.0.9.2, ... (Linux routes all of 127/8 to
    loopback), each sending a stalled upload's head and 10 bytes, then nothing."""
    head, sockets = stalled_upload_head(token), []
    for _ in range(per_source):
        for k in range(sources):
            s = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(f"127.0.{9 + k // 250}.{1 + k % 250}", 0)
            )
            s.sendall(head)
            sockets.append(s)
    return sockets


def answer_so_far(s: socket.socket) -> bytes | None:
    """What the server sent on `s` (b"" if it closed without a word), or None while it has neither answered nor
    closed."""
    s.setblocking(False)
    try:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data
    except BlockingIOError:
        return data or None
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        s.setblocking(True)


@dataclass
class Scores:
    statuses: list[int]
    seconds: list[float]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def score_meanwhile(base: str, n: int, token: str | None, fresh_connection_every: int = 5) -> Scores:
    """`n` one-image scores, one after another, on a keep-alive connection renewed every `fresh_connection_every`."""
    image = encode_png(np.zeros((32, 32, 3), np.uint8))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    statuses, seconds = [], []
    client = httpx.Client(base_url=base, timeout=60, headers=headers)
    try:
        for i in range(n):
            if i and i % fresh_connection_every == 0:
                client.close()
                client = httpx.Client(base_url=base, timeout=60, headers=headers)
            start = time.perf_counter()
            try:
                statuses.append(client.post(SCORE_PATH, json={"prompts": ["a"], "images": [image]}).status_code)
            except httpx.TransportError:
                statuses.append(0)
            seconds.append(time.perf_counter() - start)
    finally:
        client.close()
    return Scores(statuses, seconds)
