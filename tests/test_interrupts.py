"""Signals become a stop request the driver loop reads; a second signal stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from cluster.interrupts import Interrupted, StopRequest


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_requests_a_stop_second_stops_now_handlers_restored(sig, code, capsys):
    before = signal.getsignal(sig)
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.name == sig.name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before
    assert f"rlcm: {sig.name} received: stopping after saving the last finished epoch" in capsys.readouterr().err
    assert Interrupted(stop.signum, "interrupted").exit_code == code
