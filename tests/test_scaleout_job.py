"""`ray job submit` of the toy preset against its own `ray start --head` cluster (slow; the cluster is stopped after)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_runs_the_toy_preset(tmp_path):
    gcs, dashboard = free_port(), free_port()
    # every port of its own: the session's Ray instance (ray_local) holds the defaults, e.g. the agent's 52365
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")]
    temp_dir = Path("/tmp") / f"rlcm-job-{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"  # a ~/.ray/auth_token left by another tool would switch token auth on
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={gcs}", "--num-cpus=3",
         "--include-dashboard=true", f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        from cluster.entrypoint import runtime_env, submit_train_job
        from ray.job_submission import JobSubmissionClient

        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        out = tmp_path / "run"
        job_id, status = submit_train_job(
            address, "tiny-cpu", str(out), ["run.epochs=2", "sampling.batches_per_epoch=1"],
            runtime=runtime_env(working_dir=str(REPO)), wait=True, timeout_s=400,
        )
        logs = JobSubmissionClient(address).get_job_logs(job_id)
        assert status == "SUCCEEDED", logs[-3000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["samples_seen"] for r in rows] == [8, 16]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the processes it started, only those
        head.wait(timeout=60)
