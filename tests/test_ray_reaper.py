"""A local Ray started by rlcm dies with its driver, also when the driver is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.ray_reaper import _alive, _cmdline, read_tracked, session_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc"),
]

DRIVER = """
import os, sys, time
from pathlib import Path
import ray
from cluster.ray_setup import init_ray
init_ray("local", num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=0)
class Busy:
    def pid(self):
        return os.getpid()

actor = Busy.remote()
ray.get(actor.pid.remote())
print(ray._private.worker._global_node.get_session_dir_path(), flush=True)
time.sleep(300)
"""


def names(pids) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[-40:])
        except OSError:
            pass
    return out


def test_sigkill_of_the_driver_leaves_no_ray_process(tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    try:
        session_dir = Path(driver.stdout.readline().strip())
        session = session_dir.name
        assert session.startswith("session_"), "the driver did not start Ray"
        deadline = time.monotonic() + 30
        while not {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(names(session_processes(session))):
            assert time.monotonic() < deadline, f"agents never started: {names(session_processes(session))}"
            time.sleep(0.2)
        before = session_processes(session)
        assert any("ray::Busy" in n for n in names(before)) and len(before) >= 6  # gcs, raylet, agents, worker, ...
        guarded = {pid: start for pid, start in before.items() if "ray_reaper.py" not in _cmdline(pid)}
        while not _alive(guarded).items() <= read_tracked(session_dir).items():  # a scan of the reaper since then
            assert time.monotonic() < deadline, f"the reaper never tracked {names(_alive(guarded))}"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    killed = time.monotonic()
    while (left := {**_alive(before), **session_processes(session)}) and time.monotonic() < killed + 15:
        time.sleep(0.2)
    try:
        assert not left, f"left behind 15 s after the driver's SIGKILL: {names(left)}"
    finally:
        for pid in _alive(left):
            os.kill(pid, signal.SIGKILL)
