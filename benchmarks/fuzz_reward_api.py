"""Fuzz the reward HTTP API: N generated requests, none may get a 5xx or an undocumented status.

    pip install 'hypothesis>=6.100'
    python benchmarks/fuzz_reward_api.py [--cases 10000]

Requests go to the FastAPI app in process (Starlette's TestClient), the same app `rlcm rewards serve` runs.
Bodies are drawn around the OpenAPI schema: arbitrary JSON, bodies of the right shape with arbitrary strings,
valid PNGs of random sizes and modes, truncated PNGs, PNG headers that declare huge sizes, base64 noise that
starts like a PNG, count mismatches, extra keys, wrong content types, missing or wrong tokens, unknown rewards.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rewards_service.app import ERRORS, create_app  # noqa: E402
from rewards_service.registry import build_scorer  # noqa: E402
from rewards_service.settings import ServiceSettings  # noqa: E402

TOKEN = "fuzz-token"
SETTINGS = ServiceSettings(
    auth_token=TOKEN,
    max_images_per_request=8,
    max_pixels_per_image=64 * 64,
    max_image_side=96,
    max_pixels_per_request=4 * 64 * 64,
    max_pixels_in_flight=8 * 64 * 64,
    max_body_bytes=256 * 1024,
)
DOCUMENTED = {200} | set(ERRORS)


def png(width: int, height: int, mode: str, seed: int) -> bytes:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


b64 = st.builds(lambda raw: base64.b64encode(raw).decode(), st.binary(max_size=64))
valid_png = st.builds(
    lambda w, h, m, s: base64.b64encode(png(w, h, m, s)).decode(),
    st.integers(1, 72),
    st.integers(1, 72),
    st.sampled_from(["L", "RGB", "RGBA"]),
    st.integers(0, 9),
)
truncated_png = st.builds(lambda p, cut: p[: max(1, len(p) * cut // 100)], valid_png, st.integers(1, 99))
huge_header = st.builds(
    lambda w, h, tail: base64.b64encode(png_header(w, h) + tail).decode(),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=32),
)
png_like = st.builds(
    lambda tail: "iVBORw0KGgo" + tail,
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=80),
)
image_string = st.one_of(valid_png, truncated_png, huge_header, png_like, b64, st.text(max_size=40))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def shaped_body(draw) -> dict:
    n = draw(st.integers(0, 10))
    images = draw(st.lists(valid_png if draw(st.booleans()) else image_string, min_size=n, max_size=n))
    m = n if draw(st.integers(0, 4)) else draw(st.integers(max(0, n - 1), n + 1))
    prompts = draw(st.lists(st.text(max_size=30), min_size=m, max_size=m))
    body = {"prompts": prompts, "images": images}
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=8))] = draw(json_value)
    if draw(st.integers(0, 9)) == 0:
        del body[draw(st.sampled_from(["prompts", "images"]))]
    return body


request = st.fixed_dictionaries(
    {
        "name": st.integers(0, 19).flatmap(
            lambda i: (
                st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789-", min_size=1, max_size=20)
                if i == 0
                else st.sampled_from(["jpeg_compressibility"] * 3 + ["jpeg_incompressibility"])
            )
        ),
        "body": st.integers(0, 9).flatmap(
            lambda i: json_value if i == 0 else st.binary(max_size=200) if i == 1 else shaped_body()
        ),
        "content_type": st.sampled_from(
            ["application/json"] * 16 + ["text/plain", "application/json; charset=utf-8", ""]
        ),
        "auth": st.sampled_from([f"Bearer {TOKEN}"] * 16 + ["", "Bearer wrong", "Basic abc", f"bearer {TOKEN}"]),
    }
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scorers = {n: build_scorer(n) for n in ("jpeg_compressibility", "jpeg_incompressibility")}
    client = TestClient(create_app(scorers, SETTINGS), raise_server_exceptions=False)
    statuses: Counter = Counter()
    bad: list[str] = []

    @settings(
        max_examples=args.cases,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(request)
    def one(case: dict) -> None:
        body = case["body"]
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {k: v for k, v in (("content-type", case["content_type"]), ("authorization", case["auth"])) if v}
        response = client.post(f"/v1/score/{case['name']}", content=content, headers=headers)
        statuses[response.status_code] += 1
        if (
            response.status_code >= 500
            or response.status_code not in DOCUMENTED
            or "detail" not in response.json()
            and response.status_code != 200
        ):
            bad.append(f"{response.status_code}: {response.text[:200]} <- {str(case)[:300]}")

    import random

    random.seed(args.seed)
    start = time.perf_counter()
    one()
    seconds = time.perf_counter() - start
    total = sum(statuses.values())
    print(f"{total} requests in {seconds:.0f} s; statuses: {dict(sorted(statuses.items()))}")
    print(f"5xx or undocumented: {len(bad)}")
    for line in bad[:10]:
        print("  " + line)
    sys.exit(1 if bad or total < args.cases else 0)


if __name__ == "__main__":
    main()
