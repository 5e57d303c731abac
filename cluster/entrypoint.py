"""`ray job submit` helpers: the runtime_env of a training job and a Python call that submits one.

CLI equivalent:
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env-json '<runtime_env(...)>' \\
        -- rlcm train --config rlcm/config/presets/<task>.yaml --output-dir /shared/runs/<task>

Token auth (Ray's default for a cluster started where ~/.ray/auth_token exists): `job_client` asks the
dashboard whether the cluster wants a token and sends the one found like Ray's clients find it
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); `ray job submit` needs RAY_AUTH_MODE=token for that.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from cluster.ray_setup import find_auth_token

EXCLUDES = [".git", ".venv", "/runs", "**/__pycache__", "*.safetensors", "*.pt"]


def runtime_env(pip: list[str] | None = None, env: dict[str, str] | None = None, working_dir: str = ".") -> dict:
    """Ship the repository as the job's working dir; `pip` installs extra packages on the workers.

    Leave `pip` empty when the cluster image already has rlcm installed (the KubeRay and launcher
    files install it at node start), which makes the job start in seconds.
    """
    runtime = {
        "working_dir": working_dir,
        "excludes": EXCLUDES,
        "env_vars": {"TOKENIZERS_PARALLELISM": "false", **(env or {})},
    }
    if pip:
        runtime["pip"] = pip
    return runtime


def train_entrypoint(config: str, output_dir: str, overrides: list[str] | None = None) -> str:
    """The shell command a job runs: `rlcm train` with a preset or YAML, output folder and overrides."""
    words = ["rlcm", "train", "--config", config, "--output-dir", output_dir]
    for item in overrides or []:
        words += ["--set", item]
    return shlex.join(words)


def dashboard_auth_mode(address: str, timeout_s: float = 10.0) -> str | None:
    """ "token" or "disabled" as the dashboard at `address` reports it; None if it does not say (Ray before token
    auth)."""
    import requests

    try:
        response = requests.get(address.rstrip("/") + "/api/authentication_mode", timeout=timeout_s)
    except requests.RequestException as error:
        raise ConnectionError(
            f"no Ray dashboard answers at {address} ({error}); start the cluster or fix --address"
        ) from error
    return response.json().get("authentication_mode") if response.ok else None


def job_client(address: str, auth_token: str | None = None):
    """A JobSubmissionClient for the dashboard at `address`, sending the auth token when the cluster asks for one.

    auth_token: default the token Ray's clients would find (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if dashboard_auth_mode(address) != "token":
        return JobSubmissionClient(address)
    found = (auth_token, "auth_token") if auth_token else find_auth_token()
    if found is None:
        raise RuntimeError(
            f"the Ray cluster at {address} requires token auth and no token was found here: export "
            "RAY_AUTH_TOKEN=<token> (`ray get-auth-token` on the head prints it) or copy the head's ~/.ray/auth_token "
            "to this machine"
        )
    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {found[0]}"})
    except AuthenticationError as error:
        raise RuntimeError(
            f"the Ray cluster at {address} refused the auth token from {found[1]}; use the head's token "
            "(`ray get-auth-token` on the head) in RAY_AUTH_TOKEN or ~/.ray/auth_token"
        ) from error


def submit_train_job(
    address: str,
    config: str,
    output_dir: str,
    overrides: list[str] | None = None,
    runtime: dict | None = None,
    wait: bool = False,
    timeout_s: float = 3600.0,
    auth_token: str | None = None,
    on_submitted: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Submit `rlcm train` to the Ray cluster at `address` (the dashboard, e.g. http://127.0.0.1:8265).

    Returns (job id, status); with `wait`, blocks until the job ends and returns its final status.
    on_submitted(job id): called as soon as the job is accepted (before any wait).
    auth_token: for a cluster with token auth (default: found as `job_client` says).
    """
    from ray.job_submission import JobStatus

    client = job_client(address, auth_token)
    job_id = _submit_when_agent_ready(client, train_entrypoint(config, output_dir, overrides), runtime or runtime_env())
    if on_submitted is not None:
        on_submitted(job_id)
    status = client.get_job_status(job_id)
    deadline = time.monotonic() + timeout_s
    while (
        wait
        and status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        and time.monotonic() < deadline
    ):
        time.sleep(2)
        status = client.get_job_status(job_id)
    return job_id, str(status)


def _submit_when_agent_ready(client, entrypoint: str, runtime: dict, wait_s: float = 120.0) -> str:
    """Submit, retrying while a freshly started head node has no job agent up yet."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)
