"""`rlcm rewards serve` on a fresh local Ray: every listening socket of it and its Ray is on loopback, and a clean
log."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from rewards_service.serve import is_loopback
from tests.servers import free_port


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        address = address.ipv4_mapped
    return address.is_loopback


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for process in processes:
        try:
            found += [
                (" ".join(process.cmdline())[:80], c.laddr.ip, c.laddr.port)
                for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except psutil.NoSuchProcess:
            continue
    return found


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    assert (
        not is_loopback("0.0.0.0")
        and not is_loopback("::")
        and not is_loopback("10.1.2.3")
        and not is_loopback("example.org")
    )


@pytest.mark.slow
def test_serve_listens_on_loopback_only_and_logs_no_stale_options_warning(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlcm.commands.main", "rewards", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the service did not answer within 120 s: {log.read_text()[-2000:]}")
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        sockets = _listening(tree)
        names = " ".join(name for name, _, _ in sockets)
        assert "ServeReplica" in names and "ProxyActor" in names, sockets  # the replicas and the proxy were looked at
        exposed = [s for s in sockets if not _loopback(s[1])]
        assert not exposed, f"listening on non-loopback addresses: {exposed}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for process in tree[1:]:  # whatever of this Ray outlived its driver
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    assert "will not be applied" not in log.read_text(), log.read_text()[-2000:]
