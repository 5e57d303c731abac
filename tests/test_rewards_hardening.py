"""Reward service hardening (issue 8): oversized sides, PNG bombs, scorer faults, mixed sizes, stalled uploads."""

from __future__ import annotations

import base64
import socket
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rewards_service import codec
from rewards_service.app import create_app
from rewards_service.client import InProcessRewardClient, RetryPolicy
from rewards_service.codec import encode_png
from rewards_service.scorers.base import FAILED_VERSION, ScoreResult, ScorerUnavailable
from rewards_service.scorers.jpeg import JpegCompressibility, jpeg_size_kb
from rewards_service.settings import ServiceSettings
from tests.servers import standalone_service


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, rows: int | None = None, extra: bytes = b"") -> bytes:
    """A grayscale PNG declaring width x height; only `rows` rows of zeros are compressed (a cheap bomb)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return codec.PNG_SIGNATURE + header + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _post(client: TestClient, images: list[str], name: str = "jpeg_compressibility") -> httpx.Response:
    return client.post(f"/v1/score/{name}", json={"prompts": ["p"] * len(images), "images": images})


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(
        create_app({"jpeg_compressibility": JpegCompressibility()}, ServiceSettings(auth_token=None)),
        raise_server_exceptions=False,
    )


# ---------------------------------------------------------------- image sides and bombs


def test_1x65501_png_is_413_not_500(client):
    """PIL cannot write a JPEG with a side above 65500; the header check answers before any scorer runs."""
    raw = png_bytes(1, 65501)
    response = _post(client, [b64(raw)])
    assert response.status_code == 413, response.text
    assert "1x65501 (WxH), a side above the limit of 4096 pixels; resize it" in response.json()["detail"]
    wide = _post(client, [b64(png_bytes(65501, 1))])
    assert wide.status_code == 413 and "65501x1" in wide.json()["detail"]


def test_max_image_side_is_configurable_up_to_the_jpeg_limit():
    assert ServiceSettings(auth_token=None, max_image_side=65500).max_image_side == 65500
    with pytest.raises(ValidationError, match="max_image_side"):
        ServiceSettings(auth_token=None, max_image_side=65501)
    app = create_app(
        {"jpeg_compressibility": JpegCompressibility()}, ServiceSettings(auth_token=None, max_image_side=16)
    )
    client = TestClient(app, raise_server_exceptions=False)
    assert _post(client, [encode_png(np.zeros((16, 16, 3), np.uint8))]).status_code == 200
    assert _post(client, [encode_png(np.zeros((17, 1, 3), np.uint8))]).status_code == 413


def test_jpeg_scorer_names_the_side_limit_in_process():
    with pytest.raises(ValueError, match="side above 65500 pixels"):
        JpegCompressibility().score(np.zeros((1, 1, 65501, 3), np.uint8), ["p"])


def test_png_bomb_is_413_before_decoding(client, monkeypatch):
    opened, real_open = [], codec.Image.open
    monkeypatch.setattr(codec.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    bomb = png_bytes(20000, 20000, rows=200)  # 400 MB of pixels declared, a few kB on the wire
    assert len(bomb) < 50_000
    response = _post(client, [encode_png(np.zeros((8, 8, 3), np.uint8)), b64(bomb)])
    assert response.status_code == 413 and "images[1] is 20000x20000" in response.json()["detail"]
    pixels = _post(client, [b64(png_bytes(3000, 3000, rows=1))])  # sides fine, pixel count not
    assert pixels.status_code == 413 and "9000000 pixels, above the limit of 1048576" in pixels.json()["detail"]
    assert opened == []  # every header is checked before any image is decoded: PIL never opened a bomb (nor the 8x8)


def test_pil_decompression_guards_are_413():
    """Limits set above PIL's own bomb limit, and a compressed text chunk that inflates to 20 MB."""
    settings = ServiceSettings(
        auth_token=None,
        max_pixels_per_image=10**10,
        max_image_side=65500,
        max_pixels_per_request=10**10,
        max_pixels_in_flight=10**10,
    )
    client = TestClient(
        create_app({"jpeg_compressibility": JpegCompressibility()}, settings), raise_server_exceptions=False
    )
    huge = _post(client, [b64(png_bytes(60000, 60000, rows=1))])
    assert huge.status_code == 413 and "decompression bomb" in huge.json()["detail"]
    text_bomb = _chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * 20_000_000, 9))
    text = _post(client, [b64(png_bytes(8, 8, extra=text_bomb))])
    assert text.status_code == 413 and "too much data" in text.json()["detail"]


@pytest.mark.parametrize(
    "raw, text", [(codec.PNG_SIGNATURE + b"\0" * 30, "IHDR"), (png_bytes(0, 8), "0x8")], ids=["no-ihdr", "zero-size"]
)
def test_bad_png_header_is_422(client, raw, text):
    response = _post(client, [b64(raw)])
    assert response.status_code == 422 and text in response.json()["detail"]


# ---------------------------------------------------------------- scorer faults: 422 for the input, 5xx for the server


class Raising:
    name, version = "raising", "1"

    def __init__(self, exc: BaseException | None = None, details: dict | None = None) -> None:
        self.exc, self.details = exc, details

    def score(self, images, prompts) -> ScoreResult:
        if self.exc is not None:
            raise self.exc
        return ScoreResult([1.0] * len(prompts), self.version, self.details or {})


@pytest.mark.parametrize(
    "scorer, status, text",
    [
        (Raising(ValueError("cannot score grey images")), 422, "cannot score these images: cannot score grey images"),
        (
            Raising(OSError("encoder error -2")),
            500,
            "failed on the server (OSError: encoder error -2); the request is valid",
        ),
        (Raising(ScorerUnavailable("replica restarting")), 503, "unavailable: replica restarting"),
        (
            Raising(details={"valid": [True]}),
            500,
            "internal server error (ValueError)",
        ),  # a scorer bug outside the call
    ],
    ids=["value-error", "os-error", "unavailable", "bad-details"],
)
def test_scorer_errors_map_to_json_statuses(scorer, status, text):
    client = TestClient(create_app({"r": scorer}, ServiceSettings(auth_token=None)), raise_server_exceptions=False)
    response = _post(client, [encode_png(np.zeros((8, 8, 3), np.uint8))], name="r")
    assert response.status_code == status and text in response.json()["detail"]


def test_clients_do_not_retry_a_scorers_value_error():
    client = InProcessRewardClient(
        Raising(ValueError("side above 65500")), retry=RetryPolicy(max_attempts=3, backoff_s=0)
    )
    result = client.score(np.zeros((1, 8, 8, 3), np.uint8), ["a"])
    assert result.details["attempts"] == [1] and "ValueError: side above 65500" in result.details["error"][0]


def test_failed_results_are_recognisable():
    client = InProcessRewardClient(Raising(RuntimeError("down")), retry=RetryPolicy(max_attempts=1))
    failed = client.score(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"])
    assert failed.is_failed and failed.version == FAILED_VERSION == "" and failed.valid == [False, False]
    assert not ScoreResult([float("nan")], "1", valid=[False]).is_failed  # scored by version 1, sample invalid


# ---------------------------------------------------------------- mixed sizes in one request


class Recording(JpegCompressibility):
    """JPEG compressibility that records each call's batch shape and echoes the prompts."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def score(self, images, prompts) -> ScoreResult:
        self.calls.append(images.shape)
        result = super().score(images, prompts)
        result.details["prompt"] = list(prompts)
        return result


def test_mixed_sizes_are_scored_per_size_in_request_order():
    rng = np.random.default_rng(0)
    shapes = [(8, 8), (16, 12), (8, 8), (24, 24), (16, 12)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    scorer = Recording()
    client = TestClient(
        create_app({"jpeg_compressibility": scorer}, ServiceSettings(auth_token=None)), raise_server_exceptions=False
    )
    prompts = [f"p{i}" for i in range(len(images))]
    response = client.post(
        "/v1/score/jpeg_compressibility", json={"prompts": prompts, "images": [encode_png(im) for im in images]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rewards"] == [-jpeg_size_kb(im) for im in images]
    assert body["rewards"] == [JpegCompressibility().score(im[None], ["p"]).rewards[0] for im in images]
    assert body["prompt"] == prompts and body["valid"] == [True] * 5 and body["version"] == "1"
    assert sorted(scorer.calls) == [(1, 24, 24, 3), (2, 8, 8, 3), (2, 16, 12, 3)]  # one call per size


# ---------------------------------------------------------------- stalled uploads


def open_stalled_uploads(port: int, n: int) -> list[socket.socket]:
    """`n` connections that send headers announcing 100 kB and 10 bytes of body, then stall."""
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(
            b"POST /v1/score/jpeg_compressibility HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"prompts"'
        )
        sockets.append(s)
    return sockets


def read_until_closed(s: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or timeout_s passes)."""
    s.settimeout(timeout_s)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except TimeoutError:
        pass
    finally:
        s.close()
    return data


def still_waiting(s: socket.socket) -> bool:
    """True if the server has neither answered nor closed this connection yet."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)  # data (an answer) or b"" (closed)
        return False
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)


def check_stalled_uploads_do_not_block(base: str, port: int, n: int) -> None:
    """Stalled uploads block neither /healthz nor a real score (both answer while the uploads still wait);
    then each upload gets a 408 and its connection closed (the server's body_timeout_s must leave time for both)."""
    stalled, opened = open_stalled_uploads(port, n), time.monotonic()
    try:
        # the window is body_timeout_s (4-5 s; the two requests take ~0.1 s): blocked, they would answer
        # only after the uploads' 408s; the assertion is on that order, not on speed
        assert httpx.get(f"{base}/healthz", timeout=30).json() == {"status": "ok"}
        image = np.zeros((8, 8, 3), np.uint8)
        scored = httpx.post(
            f"{base}/v1/score/jpeg_compressibility", json={"prompts": ["a"], "images": [encode_png(image)]}, timeout=30
        )
        assert scored.status_code == 200 and scored.json()["rewards"] == [-jpeg_size_kb(image)]
        assert all(still_waiting(s) for s in stalled), (
            f"the uploads were answered before /healthz and a score ({time.monotonic() - opened:.1f} s): they blocked"
        )
        answers = [read_until_closed(s, timeout_s=30) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within" in answer


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    config = tmp_path_factory.mktemp("serve") / "rewards.yaml"
    config.write_text(
        "rewards:\n  - name: jpeg_compressibility\nsettings:\n  body_timeout_s: 4\n  limit_concurrency: 64\n"
        "  auth_token: null\n"
    )
    with standalone_service(config) as (base, port):
        yield base, port


def test_standalone_stalled_uploads_get_408(standalone):
    base, port = standalone
    check_stalled_uploads_do_not_block(base, port, n=8)
