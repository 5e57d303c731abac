"""A server-wide budget of decoded pixels: requests reserve their pixels before decoding and wait (bounded) for room."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class BudgetBusy(Exception):
    """No room in the budget within the wait: the server is busy, not the request wrong (a 503)."""


class PixelBudget:
    """At most `capacity` pixels reserved at once, across all requests of one event loop (first come, first served)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int, wait_s: float) -> AsyncIterator[None]:
        """Hold `pixels` of the budget for the body of the `async with`; BudgetBusy if no room comes within `wait_s`."""
        if pixels > self.capacity:
            raise ValueError(f"{pixels} pixels can never fit a budget of {self.capacity}")
        if self._changed is None:
            self._changed = asyncio.Condition()  # made on first use: bound to the server's event loop
        async with self._changed:
            if self.in_use + pixels > self.capacity:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity), wait_s
                    )
                except TimeoutError:
                    raise BudgetBusy(
                        f"{self.in_use} of {self.capacity} decoded pixels are in use by other requests"
                    ) from None
            self.in_use += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()
