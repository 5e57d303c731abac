"""Memory of the standalone reward service under decode-heavy requests: RSS before, at peak and after.

    python benchmarks/bench_reward_memory.py

Requests carry all-zero 1024x1024 PNGs (4.2 kB each on the wire, 3 MiB decoded): the case where what a request
costs in memory is not bounded by its size on the wire. Each case starts a fresh `rlcm rewards serve --standalone`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards_service.codec import encode_png  # noqa: E402
from tests.servers import standalone_service  # noqa: E402

MIB = 2**20
UNBOUNDED = 10**10
CASES = [
    # name, settings, concurrent requests, images per request
    ("64 zero 1024² PNGs (issue 16), defaults", {}, 1, 64),
    ("4 at once of 16 zero 1024², defaults", {}, 4, 16),
    (
        "4 at once of 16 zero 1024², max_pixels_in_flight = 1 request",
        {"max_pixels_in_flight": 16 * 2**20, "pixel_wait_s": 120},
        4,
        16,
    ),
    (
        "4 at once of 64 zero 1024², no pixel limits (before issue 16)",
        {"max_pixels_per_request": UNBOUNDED, "max_pixels_in_flight": UNBOUNDED},
        4,
        64,
    ),
]


def measure(settings: dict, concurrent: int, images: int) -> dict:
    zero = encode_png(np.zeros((1024, 1024, 3), np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "rewards.yaml"
        config.write_text(
            yaml.safe_dump(
                {"rewards": [{"name": "jpeg_compressibility"}], "settings": {"auth_token": None, **settings}}
            )
        )
        pids: list[int] = []
        with standalone_service(config, pids=pids) as (base, _):
            process = psutil.Process(pids[0])
            body = {"prompts": ["a"] * images, "images": [zero] * images}
            before, peak = process.memory_info().rss, 0
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrent) as pool:
                futures = [
                    pool.submit(httpx.post, f"{base}/v1/score/jpeg_compressibility", json=body, timeout=300)
                    for _ in range(concurrent)
                ]
                while not all(f.done() for f in futures):
                    peak = max(peak, process.memory_info().rss)
                    time.sleep(0.005)
            seconds = time.perf_counter() - start
            time.sleep(2.0)
            after = process.memory_info().rss
    statuses = sorted({f.result().status_code for f in futures})
    return {
        "status": statuses,
        "before": before / MIB,
        "peak": max(peak, after) / MIB,
        "after": after / MIB,
        "seconds": seconds,
    }


def main() -> None:
    print("| case | status | RSS before | peak | 2 s after | time |")
    print("|---|---|---|---|---|---|")
    for name, settings, concurrent, images in CASES:
        m = measure(settings, concurrent, images)
        print(
            f"| {name} | {', '.join(map(str, m['status']))} | {m['before']:.0f} MiB | {m['peak']:.0f} MiB | "
            f"{m['after']:.0f} MiB | {m['seconds']:.1f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
