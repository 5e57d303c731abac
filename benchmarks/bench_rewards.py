"""Reward service benchmark: JPEG images/s per CPU replica and scaling, HTTP vs handle per-batch overhead.

python benchmarks/bench_rewards.py [--replicas 1 2] [--batch 16] [--size 512] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from ray import serve

from rewards_service.codec import encode_batch
from rewards_service.scorers.jpeg import JpegCompressibility
from rewards_service.serve import run_service
from rewards_service.serve_config import RewardDeploymentConfig, RewardServiceConfig
from rewards_service.settings import ServiceSettings


def sample_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with mild noise: closer to generated images than pure noise."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        x, y = np.meshgrid(grid, grid)
        base = np.stack([a * x, b * y, np.full_like(x, c)], -1)
        out.append(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def throughput(call, images: np.ndarray, seconds: float, concurrency: int) -> float:
    """Images/s while `concurrency` callers send the batch back to back for `seconds`."""
    deadline = time.perf_counter() + seconds
    prompts = ["p"] * len(images)

    def worker() -> int:
        done = 0
        while time.perf_counter() < deadline:
            call(images, prompts)
            done += len(images)
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(lambda _: worker(), range(concurrency)))
    return total / (time.perf_counter() - start)


def latency_ms(call, images: np.ndarray, repeats: int) -> float:
    """Median latency of one batch call in ms."""
    prompts = ["p"] * len(images)
    call(images, prompts)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(images, prompts)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    images = sample_images(args.batch, args.size)
    scorer = JpegCompressibility()
    print(f"device: CPU, {cpus} cores; batch {args.batch} images of {args.size}x{args.size}")
    print(f"in process, 1 thread: {throughput(scorer.score, images, args.seconds, 1):.1f} images/s")

    port = free_port()
    print("\n| JPEG replicas | images/s | per replica |\n|---|---|---|")
    for n in args.replicas:
        config = RewardServiceConfig(
            settings=ServiceSettings(port=port, auth_token=None),
            rewards=[RewardDeploymentConfig(name="jpeg_compressibility", num_replicas=n, num_cpus=0.5)],
        )
        run_service(config)
        handle = serve.get_deployment_handle("jpeg_compressibility", app_name="rewards")
        rate = throughput(lambda im, p, h=handle: h.score.remote(im, p).result(), images, args.seconds, 2 * n)
        print(f"| {n} | {rate:.1f} | {rate / n:.1f} |")

    handle = serve.get_deployment_handle("jpeg_compressibility", app_name="rewards")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    payload_mb = sum(len(s) for s in encode_batch(images)) / 1e6
    local = latency_ms(scorer.score, images, args.repeats)
    via_handle = latency_ms(lambda im, p: handle.score.remote(im, p).result(), images, args.repeats)
    via_http = latency_ms(
        lambda im, p: http.post(
            "/v1/score/jpeg_compressibility", json={"prompts": p, "images": encode_batch(im)}
        ).raise_for_status(),
        images,
        args.repeats,
    )
    print(
        f"\nper-batch latency ({args.batch} images, {payload_mb:.1f} MB of base64 PNG over HTTP), median of "
        f"{args.repeats}:"
    )
    print("| path | ms/batch | overhead vs in process |\n|---|---|---|")
    encode = latency_ms(lambda im, p: encode_batch(im), images, args.repeats)
    for name, ms in (
        ("in process", local),
        ("Serve handle", via_handle),
        ("HTTP (PNG encode + ingress + handle)", via_http),
        ("of which client PNG encode", encode),
    ):
        print(f"| {name} | {ms:.1f} | {ms - local:+.1f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
