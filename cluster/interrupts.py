"""Ctrl-C and SIGTERM as a request to stop, not a crash.

The first SIGINT or SIGTERM sets a flag the driver loop reads between steps: it stops dispatching, finishes
or drops the epoch in progress, checkpoints the last finished one and raises `Interrupted`, which the CLI
turns into one line and exit code 130 (SIGINT) or 143 (SIGTERM). A second signal stops at once: one line,
then the process exits with the same code without saving or shutting Ray down (`os._exit`; the local Ray
processes it started share its fate and exit with it). Ray's own processes block SIGINT, so a terminal's Ctrl-C
reaches only the driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Exception):
    """The run stopped on a signal after saving what it had; `line` says where to continue from."""

    def __init__(self, signum: int, line: str):
        super().__init__(line)
        self.signum, self.line = signum, line

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


class StopRequest:
    """Set by the first SIGINT/SIGTERM while `installed`; the second one exits the process at once."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _on_signal(self, signum: int) -> None:
        if self.signum is not None:
            print(
                f"rlcm: {signal.Signals(signum).name} received again: stopping now, without saving",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(EXIT_CODES.get(signum, 128 + signum))
        self.signum = signum
        print(
            f"rlcm: {signal.Signals(signum).name} received: stopping after saving the last finished epoch (again to "
            "stop now)",
            file=sys.stderr,
            flush=True,
        )

    def _watch(self, wakeup: int) -> None:
        """Act on each signal as it arrives: CPython writes its number to `wakeup` from its C handler, so this runs
        even while the main thread is blocked in a Ray or torch call (where Python handlers wait for it)."""
        while data := os.read(wakeup, 64):
            for signum in data:
                if signum in EXIT_CODES:
                    self._on_signal(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM for the block (main thread only; elsewhere signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in EXIT_CODES}  # _watch acts on them
        previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        watcher = threading.Thread(target=self._watch, args=(read_end,), name="rlcm-signals", daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(write_end)
            watcher.join(5)
            os.close(read_end)

    def quiet_dropped_tasks(self) -> None:
        """Tasks dropped by the stop fail with "killed by ray.kill"; that is expected, not an error to report."""
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
