"""Standalone (uvicorn) connection guard: idle and half-open sockets cannot take the service down.

uvicorn answers 503 to every request once `limit_concurrency` connections are open, and it never closes a
connection that has not sent a complete request. `GuardedH11Protocol` adds:

- a header timeout: a connection with no request in progress (a fresh one, or a keep-alive one after its
  response) must deliver a complete request head within `header_timeout_s`, else it is closed;
- a per-client cap: a new connection from an address that already holds `max_connections_per_client`
  connections closes that address's oldest idle one (no request in progress); if all of them are busy the
  new connection is refused (closed);
- room under `limit_concurrency`: a new connection that would reach it closes the oldest idle connection
  of any client, so idle sockets never turn requests into 503s;
- JSON errors from the server layer too: more than `limit_concurrency` requests in progress -> 503, and an
  unparsable request (bad request line, header or Content-Length) -> 400, each with a `detail` like the app's.

Stalled and slow uploads are the app's to bound (rewards_service.uploads): they hold at most `upload_share` of
`limit_concurrency`, so the rest stays free for requests whose body has arrived.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from rewards_service.settings import ServiceSettings


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout, a per-client connection cap and idle eviction."""

    header_timeout_s: float = 10.0
    max_connections_per_client: int = 32
    max_connections: int = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # uvicorn's own limit answers a plain-text 503; _admit answers a JSON one
        self.inner_app, self.app = self.app, self._admit

    async def _admit(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, unless more than max_connections requests are in progress (this one included): then a JSON 503."""
        busy = sum(1 for c in self.connections if isinstance(c, GuardedH11Protocol) and not c.idle())
        if scope["type"] == "http" and max(busy, len(self.tasks)) > self.max_connections:
            detail = (
                f"the server is at its limit of {self.max_connections} requests in progress (limit_concurrency); retry"
            )
            await JSONResponse({"detail": detail}, 503, headers={"Retry-After": "1", "Connection": "close"})(
                scope, receive, send
            )
            return
        await self.inner_app(scope, receive, send)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, with a JSON `detail` instead of plain text."""
        detail = (
            "invalid HTTP request: a malformed request line, header or Content-Length; send a valid HTTP/1.1 request"
        )
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=STATUS_PHRASES[400]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = time.monotonic()
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()  # the next request head must arrive in time too

    def idle(self) -> bool:
        """No request in progress: nothing, or only part of a request head, has arrived since the last response."""
        return self.cycle is None or self.cycle.response_complete

    def _open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        if self._open():
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._on_header_deadline)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _on_header_deadline(self) -> None:
        self._header_deadline = None
        if self.idle() and self._open():
            self.transport.close()

    def _make_room(self) -> None:
        """Close idle connections (oldest first) so this client stays under its cap and the server under its limit."""
        others = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._open()]
        peer = self.client[0] if self.client else None
        same_peer = [c for c in others if c.client and c.client[0] == peer]
        if peer is not None and len(same_peer) >= self.max_connections_per_client:
            if not _close_oldest_idle(same_peer):
                self.transport.close()  # every connection of this client is busy: refuse this one
                return
            others = [c for c in others if c._open()]
        if len(others) + 1 >= self.max_connections:
            _close_oldest_idle(others)


def _close_oldest_idle(connections: list[GuardedH11Protocol]) -> bool:
    idle = [c for c in connections if c.idle()]
    if not idle:
        return False
    min(idle, key=lambda c: c.opened_at).transport.close()
    return True


def guarded_protocol(settings: ServiceSettings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn should use (`http=`), with `settings`' timeouts and caps."""
    return type(
        "RewardServiceH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_connections_per_client": settings.max_connections_per_client,
            "max_connections": settings.limit_concurrency,
        },
    )
