"""Signals become a stop request the driver loop reads; a second signal stops the process at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster.interrupts import Interrupted, StopRequest


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_requests_a_stop_and_handlers_are_restored(sig, code, capsys):
    before = signal.getsignal(sig)
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 10  # a watcher thread acts on it
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested and stop.name == sig.name
    assert signal.getsignal(sig) is before
    assert f"rlcm: {sig.name} received: stopping after saving the last finished epoch" in capsys.readouterr().err
    assert Interrupted(stop.signum, "interrupted").exit_code == code


SECOND_SIGNAL = """
import os, signal, sys, threading
from cluster.interrupts import StopRequest
sig = signal.Signals[sys.argv[1]]
with StopRequest().installed() as stop:
    os.kill(os.getpid(), sig)
    while not stop.requested:
        pass
    try:
        os.kill(os.getpid(), sig)
        threading.Event().wait(60)  # the main thread blocked, as in ray.get: the exit must not wait for it
    finally:
        print("a finally block ran", file=sys.stderr)
print("still running", file=sys.stderr)
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_second_signal_exits_at_once_without_running_cleanup(sig, code):
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, sig.name], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"rlcm: {sig.name} received again: stopping now, without saving"
    assert "finally" not in done.stderr and "still running" not in done.stderr and "Traceback" not in done.stderr
