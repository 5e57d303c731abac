"""`ray job submit` of the toy preset against its own `ray start --head` cluster with token auth (slow; the cluster is
stopped after), and how the submit client finds the token or says what is missing (fast, a fake dashboard)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from cluster.entrypoint import dashboard_auth_mode, job_client
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ray_job_submit_runs_the_toy_preset(tmp_path):
    gcs, dashboard = free_port(), free_port()
    # every port of its own: the session's Ray instance (ray_local) holds the defaults, e.g. the agent's 52365
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "ray-client-server-port",
        )
    ]
    temp_dir = Path("/tmp") / f"rlcm-job-{os.getpid()}"  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(16)
    (tmp_path / "auth_token").write_text(token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    # token auth (what Ray turns on once ~/.ray/auth_token exists), with a token of its own
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "auth_token"))
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--num-cpus=3",
            "--include-dashboard=true",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            *ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        from cluster.entrypoint import runtime_env, submit_train_job

        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 90
        while True:
            try:
                job_client(address, token).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        assert dashboard_auth_mode(address) == "token"
        # a driver joining by address (as `rlcm train --address` does) switches token auth on by itself
        join_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        joined = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from cluster.ray_setup import init_ray; import ray; print(init_ray('127.0.0.1:{gcs}')); "
                "print(ray.cluster_resources()['CPU'])",
            ],
            env=join_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert joined.stdout.split()[-1] == "3.0", joined.stderr[-2000:]
        assert "joined Ray cluster at" in joined.stdout
        with pytest.raises(RuntimeError, match="refused the auth token from RAY_AUTH_TOKEN"):
            with pytest.MonkeyPatch.context() as env_patch:
                env_patch.setenv("RAY_AUTH_TOKEN", "not-the-token")
                job_client(address)
        out = tmp_path / "run"
        job_id, status = submit_train_job(
            address,
            "tiny-cpu",
            str(out),
            ["run.epochs=2", "sampling.batches_per_epoch=1"],
            runtime=runtime_env(working_dir=str(REPO)),
            wait=True,
            timeout_s=400,
            auth_token=token,
        )
        logs = job_client(address, token).get_job_logs(job_id)
        assert status == "SUCCEEDED", logs[-3000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["samples_seen"] for r in rows] == [16, 32]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the processes it started, only those
        head.wait(timeout=60)


class FakeDashboard(BaseHTTPRequestHandler):
    """Answers only Ray's public /api/authentication_mode, as a token-auth head does."""

    def do_GET(self):
        body = json.dumps({"authentication_mode": "token"}).encode() if self.path == "/api/authentication_mode" else b""
        self.send_response(200 if body else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_token_cluster_without_a_token_here_says_what_to_export(tmp_path, monkeypatch):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    server = HTTPServer(("127.0.0.1", 0), FakeDashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert dashboard_auth_mode(address) == "token"
        with pytest.raises(RuntimeError, match="RAY_AUTH_TOKEN") as error:
            job_client(address)
        assert address in str(error.value) and "ray get-auth-token" in str(error.value)
    finally:
        server.shutdown()


def test_no_dashboard_at_the_address_is_a_connection_error_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConnectionError, match=address):
        job_client(address)
