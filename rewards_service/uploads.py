"""Request bodies being received: a minimum upload rate, and bounds that slow uploads cannot fill at others' expense.

An upload's deadline is  t0 + grace + bytes / min_rate,  at most t0 + body_timeout (t0: when the server began
reading the body); like Apache's mod_reqtimeout `body=grace,MinRate=rate`, every `min_rate` bytes that arrive buy
one more second. A stalled upload is therefore cut off `grace` seconds after it began, a steady one never.

The uploads in progress are bounded in number (`max_uploads`: a share of the requests the server takes at once,
the rest reserved for requests whose body has arrived) and in bytes (`max_upload_bytes`). When a new upload or a
new chunk goes over a bound, the upload with the earliest deadline (the one furthest behind the rate) is cut off
first; each cut-off upload is answered 408 by its own request and its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Upload:
    """One request body being received; `cut_off` says why the server stopped it early (None if it did not)."""

    started: float
    grace_s: float
    min_rate: float
    timeout_s: float
    bytes: int = 0
    cut_off: str | None = None
    timer: asyncio.Timeout | None = field(default=None, repr=False)

    def deadline(self) -> float:
        """When this upload is too slow: t0 + grace + bytes/min_rate, capped at t0 + timeout."""
        return self.started + min(self.timeout_s, self.grace_s + self.bytes / self.min_rate)

    def why_stopped(self, now: float) -> str:
        """Why the body was not read to the end, for the 408 `detail`."""
        elapsed = now - self.started
        if self.cut_off:
            return self.cut_off
        if elapsed >= self.timeout_s:
            return (
                f"the request body did not arrive within {self.timeout_s} s ({self.bytes} bytes came); send it faster "
                "or in smaller requests"
            )
        return (
            f"the request body arrived too slowly: {self.bytes} bytes in {elapsed:.1f} s, below {self.min_rate:.0f} "
            f"bytes/s after the first {self.grace_s} s; send it faster"
        )


class UploadSlots:
    """The uploads in progress of one server (or Serve ingress replica), with their bounds."""

    def __init__(
        self, max_uploads: int, max_upload_bytes: int, grace_s: float, min_rate: float, timeout_s: float
    ) -> None:
        self.max_uploads, self.max_upload_bytes = max_uploads, max_upload_bytes
        self.grace_s, self.min_rate, self.timeout_s = grace_s, min_rate, timeout_s
        self.active: set[Upload] = set()
        self.bytes_in_flight = 0

    @contextlib.asynccontextmanager
    async def receiving(self) -> AsyncIterator[Upload]:
        """Register an upload for the duration of the block; TimeoutError when it is too slow or cut off."""
        loop = asyncio.get_running_loop()
        upload = Upload(loop.time(), self.grace_s, self.min_rate, self.timeout_s)
        try:
            async with asyncio.timeout(upload.deadline()) as timer:
                upload.timer = timer
                self.active.add(upload)
                if len(self.active) > self.max_uploads:
                    self._cut_off_furthest_behind(
                        f"{len(self.active)} uploads were in progress, above the {self.max_uploads} that upload_share "
                        "allows"
                    )
                yield upload
        finally:
            self._remove(upload)

    def received(self, upload: Upload, n: int) -> None:
        """`n` more bytes of `upload` came: move its deadline, and keep all uploads' bytes within max_upload_bytes."""
        upload.bytes += n
        if upload in self.active:
            self.bytes_in_flight += n
            _stop_at(upload, upload.deadline())
        while self.bytes_in_flight > self.max_upload_bytes and self.active:
            self._cut_off_furthest_behind(
                f"uploads in progress held {self.bytes_in_flight} bytes, above max_upload_bytes "
                f"({self.max_upload_bytes})"
            )

    def _cut_off_furthest_behind(self, reason: str) -> None:
        victim = min(self.active, key=Upload.deadline)
        loop = asyncio.get_running_loop()
        victim.cut_off = (
            f"the server cut off this upload to make room: {reason}, and this one was the furthest behind "
            f"{self.min_rate:.0f} bytes/s ({victim.bytes} bytes in {loop.time() - victim.started:.1f} s); retry, "
            "sending faster"
        )
        self._remove(victim)
        _stop_at(victim, loop.time())

    def _remove(self, upload: Upload) -> None:
        if upload in self.active:
            self.active.discard(upload)
            self.bytes_in_flight -= upload.bytes


def _stop_at(upload: Upload, when: float) -> None:
    if upload.timer is not None and not upload.timer.expired():
        upload.timer.reschedule(when)
