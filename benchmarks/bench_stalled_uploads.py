"""Stalled uploads against the reward service (issue 28): the standalone service and Ray Serve, default settings.

    python benchmarks/bench_stalled_uploads.py                 # standalone, then Serve (a fresh local Ray)
    python benchmarks/bench_stalled_uploads.py --modes standalone --seconds 8

Each attack opens stalled uploads (an authorized POST head announcing 100 kB, 10 bytes of body, then nothing)
from loopback source addresses 127.0.9.1, .2, ... while one well-behaved client scores one image at a time.
It prints the scores' statuses and latencies, how many stalled uploads the server still holds over time, and
how each one was answered.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.attacks import answer_so_far, open_stalled_uploads, score_meanwhile  # noqa: E402
from tests.servers import free_port  # noqa: E402

TOKEN = "bench-token"
ATTACKS = [("8 addresses x 32", 8, 32), ("300 addresses x 1", 300, 1)]
CHECKPOINTS_S = (1, 3, 6, 10, 20, 29, 31)


def start(mode: str, config: Path, port: int, log: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "rlcm.commands.main",
        "rewards",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log.open("w") as out:
        return subprocess.Popen(
            args + (["--standalone"] if mode == "standalone" else []), stdout=out, stderr=subprocess.STDOUT, env=env
        )


def wait_healthy(base: str, proc: subprocess.Popen, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no /healthz within {within_s} s")


def kind(answer: bytes | None) -> str:
    if answer is None:
        return "still held"
    if not answer:
        return "closed without an answer"
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "?"
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return f"{status} (no JSON detail)"
    for words in ("cut off this upload", "arrived too slowly", "did not arrive within"):
        if words in detail:
            return f"{status} {words}"
    return f"{status} {detail[:40]}"


def attack(base: str, port: int, sources: int, per_source: int, seconds: float) -> None:
    start_s = time.monotonic()
    stalled = open_stalled_uploads(port, sources, per_source, TOKEN)
    print(f"  opened {len(stalled)} stalled uploads in {time.monotonic() - start_s:.1f} s")
    scores, held, answers = [], {}, [None] * len(stalled)
    try:
        while (elapsed := time.monotonic() - start_s) < seconds:
            scores.append(score_meanwhile(base, 5, TOKEN))
            for checkpoint in CHECKPOINTS_S:
                if checkpoint <= elapsed and checkpoint not in held:
                    answers = [a if a is not None else answer_so_far(s) for a, s in zip(answers, stalled)]
                    held[checkpoint] = sum(a is None for a in answers)
        answers = [a if a is not None else answer_so_far(s) for a, s in zip(answers, stalled)]
    finally:
        for s in stalled:
            s.close()
    statuses = collections.Counter(status for batch in scores for status in batch.statuses)
    latencies = sorted(t for batch in scores for t in batch.seconds)
    quantile = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        f"  {len(latencies)} scores in {seconds:.0f} s: statuses {dict(statuses)}; p50 {quantile(0.5):.1f} ms, p99 "
        f"{quantile(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    print("  stalled uploads still held at " + ", ".join(f"{t} s: {n}" for t, n in held.items()))
    print(f"  answers: {dict(collections.Counter(kind(a) for a in answers))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["standalone", "serve"], choices=["standalone", "serve"])
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="how long each attack lasts while the client scores"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "rewards.yaml"
        config.write_text(
            f"rewards:\n  - name: jpeg_compressibility\n    num_cpus: 0.5\nsettings:\n  auth_token: {TOKEN}\n"
        )
        for mode in args.modes:
            port = free_port()
            base, log = f"http://127.0.0.1:{port}", Path(tmp) / f"{mode}.log"
            proc = start(mode, config, port, log)
            try:
                wait_healthy(base, proc, 180)
                for name, sources, per_source in ATTACKS:
                    print(f"{mode}: {name} stalled uploads, default settings")
                    attack(base, port, sources, per_source, args.seconds)
                    time.sleep(1)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
