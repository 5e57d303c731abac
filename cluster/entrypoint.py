"""`ray job submit` helpers: the runtime_env of a training job and a Python call that submits one.

CLI equivalent:
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env-json '<runtime_env(...)>' \\
        -- rlcm train --config cluster/configs/<task>.yaml --output-dir /shared/runs/<task>
"""

from __future__ import annotations

import shlex
import time

EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", "*.safetensors", "*.pt"]


def runtime_env(pip: list[str] | None = None, env: dict[str, str] | None = None, working_dir: str = ".") -> dict:
    """Ship the repository as the job's working dir; `pip` installs extra packages on the workers.

    Leave `pip` empty when the cluster image already has rlcm installed (the KubeRay and launcher
    files install it at node start), which makes the job start in seconds.
    """
    runtime = {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": {"TOKENIZERS_PARALLELISM": "false", **(env or {})}}
    if pip:
        runtime["pip"] = pip
    return runtime


def train_entrypoint(config: str, output_dir: str, overrides: list[str] | None = None) -> str:
    """The shell command a job runs: `rlcm train` with a preset or YAML, output folder and overrides."""
    words = ["rlcm", "train", "--config", config, "--output-dir", output_dir]
    for item in overrides or []:
        words += ["--set", item]
    return shlex.join(words)


def submit_train_job(
    address: str, config: str, output_dir: str, overrides: list[str] | None = None, runtime: dict | None = None, wait: bool = False,
    timeout_s: float = 3600.0,
) -> tuple[str, str]:
    """Submit `rlcm train` to the Ray cluster at `address` (the dashboard, e.g. http://127.0.0.1:8265).

    Returns (job id, status); with `wait`, blocks until the job ends and returns its final status.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = _submit_when_agent_ready(client, train_entrypoint(config, output_dir, overrides), runtime or runtime_env())
    status = client.get_job_status(job_id)
    deadline = time.monotonic() + timeout_s
    while wait and status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.monotonic() < deadline:
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
