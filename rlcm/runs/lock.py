"""One live `rlcm train` per run folder: an advisory lock (`flock`) on `<output>/.rlcm.lock`.

The kernel drops the lock when the holding process dies, however it dies, so a lock file left by a
crashed or SIGKILLed run never blocks the next one. The file records who holds it, for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".rlcm.lock"
_HELD: dict[Path, int] = {}  # folder -> fd of a lock this process holds


class RunLockedError(RuntimeError):
    """Another live process is training into the same folder."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"


def acquire(root: Path) -> int:
    """Lock `root` for this process (a no-op if it already holds it); RunLockedError if a live process does."""
    root = Path(root).resolve()
    if root in _HELD:
        return _HELD[root]
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLockedError(
            f"{root} is in use by a running `rlcm train` ({holder}); wait for it to end or stop it (Ctrl-C), "
            "or choose another --output-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(), 0)
    _HELD[root] = fd
    return fd


def release(root: Path) -> None:
    fd = _HELD.pop(Path(root).resolve(), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold the folder's lock for the block; nested use in one process (CLI, then the driver) locks once."""
    nested = Path(root).resolve() in _HELD
    acquire(root)
    try:
        yield
    finally:
        if not nested:
            release(root)
