"""A local Ray that rlcm started dies with the process that started it, however that process dies.

Ray stops its own servers when the driver exits, and its GCS and raylet follow a SIGKILLed driver, but
the raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) outlive it, reparented to init and
deaf to SIGTERM. `start_reaper` launches this file as a small sidecar (standard library only, its own
session so Ctrl-C does not reach it) that watches the driver: while it lives, the sidecar keeps a list of
the Ray session's processes (those whose command line names the session, and their descendants, with
their start times so a reused pid is never touched, in `reaper_tracked` in the session's folder after each scan);
once the driver is gone it sends SIGTERM, then SIGKILL to whatever is left. It exits on its own when the session's
processes are all gone.

Linux only (it reads /proc); elsewhere `start_reaper` does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.2
SCAN_EVERY_S = 1.0
GRACE_S = 1.0
START = time.monotonic()
TRACKED_FILE = "reaper_tracked"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live, non-zombie process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def session_processes(session_name: str) -> dict[int, int]:
    """{pid: start time} of the processes whose command line names `session_name`, and all their descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            stats[int(entry)] = found
    members = {pid for pid in stats if session_name in _cmdline(pid)}
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    frontier = list(members)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in members:
                members.add(child)
                frontier.append(child)
    members.discard(os.getpid())
    return {pid: stats[pid][1] for pid in members}


def _alive(tracked: dict[int, int]) -> dict[int, int]:
    """The tracked processes still running with the same start time (a reused pid is someone else)."""
    return {pid: start for pid, start in tracked.items() if (found := _stat(pid)) is not None and found[1] == start}


def kill_all(tracked: dict[int, int], grace_s: float = GRACE_S) -> None:
    """SIGTERM, then after `grace_s` SIGKILL, each tracked process that still runs."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in _alive(tracked):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while wait and _alive(tracked) and time.monotonic() < deadline:
            time.sleep(0.05)


def read_tracked(session_dir: Path) -> dict[int, int]:
    """{pid: start time} the reaper of the session at `session_dir` tracked at its last scan; {} before the first."""
    try:
        lines = (session_dir / TRACKED_FILE).read_text().splitlines()
    except OSError:
        return {}
    return {int(pid): int(start) for pid, start in (line.split() for line in lines)}


def _write_tracked(session_dir: Path, tracked: dict[int, int]) -> None:
    """Replace the session's `reaper_tracked` with `tracked`; a folder that is gone is not the reaper's concern."""
    temporary = session_dir / f"{TRACKED_FILE}.tmp"
    try:
        temporary.write_text("".join(f"{pid} {start}\n" for pid, start in sorted(tracked.items())))
        os.replace(temporary, session_dir / TRACKED_FILE)
    except OSError:
        pass


def watch(parent: int, session_dir: Path) -> None:
    """Track the session while `parent` lives; when it dies, kill what is left; return early once the session is
    gone."""
    tracked: dict[int, int] = {}
    last_scan = 0.0
    while os.getppid() == parent:
        now = time.monotonic()
        if now - last_scan >= SCAN_EVERY_S:
            last_scan = now
            scanned = {**_alive(tracked), **session_processes(session_dir.name)}
            if scanned != tracked:
                _write_tracked(session_dir, scanned)
            tracked = scanned
            if not tracked and now > START + 60:  # Ray was shut down while the driver lives on: nothing to guard
                return
        time.sleep(POLL_S)
    kill_all({**tracked, **session_processes(session_dir.name)})


def start_reaper(session_dir: str) -> subprocess.Popen | None:
    """Launch the sidecar for the local Ray session at `session_dir`, watching this process."""
    if not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen(
        [sys.executable, "-S", "-E", str(Path(__file__).resolve()), str(os.getpid()), str(session_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
