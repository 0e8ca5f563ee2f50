"""uvicorn's h11 protocol, hardened where uvicorn has no setting for it.

- A deadline for each request head: uvicorn's keep-alive timeout runs only between requests and
  any byte resets it, so a client dripping its head one byte at a time held a connection forever.
- The security headers on the 400 uvicorn writes itself for a request it cannot parse (that answer
  never passes through the app or its middleware).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from webapp.security import security_headers

HEAD_TIMEOUT = 5.0  # seconds a client has to send each request head


class PortalProtocol(H11Protocol):
    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head has arrived
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request on this connection gets the same deadline
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        event = h11.Response(status_code=400, headers=headers + security_headers(), reason=b"Bad Request")
        for out in (event, h11.Data(data=msg.encode("ascii", "replace")), h11.EndOfMessage()):
            data = self.conn.send(out)
            if data:
                self.transport.write(data)
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = self.loop.call_later(HEAD_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _too_slow(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
