"""uvicorn's h11 protocol, hardened where uvicorn has no setting for it.

- A deadline for each request head: uvicorn's keep-alive timeout runs only between requests and
  any byte resets it, so a client dripping its head one byte at a time held a connection forever.
- The security headers on the 400 uvicorn writes itself for a request it cannot parse (that answer
  never passes through the app or its middleware).
- The peer check (when `peer_check` is on): a connection whose peer socket belongs to another user
  of this machine gets a 403 before any byte of it is read, then is closed. Browsers send
  `localhost` cookies to every port, so another user's server can receive the session cookie:
  replayed from that user's process, it is refused here. See webapp/peers.py.
- A cap on open connections (`max_connections`): over it, the connection idle the longest (no
  request in progress) is closed, so idle connections cannot use up the process's descriptors.
- The asyncio log line for a failed accept (out of descriptors) is shown once a minute, on one line.

`serve_portal` passes its settings by subclassing: `PortalProtocol.configured(...)` (uvicorn
creates the protocol itself, once per connection, from the class it is given).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import ClassVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from webapp import peers
from webapp.security import security_headers

HEAD_TIMEOUT = 5.0  # seconds a client has to send each request head
MAX_CONNECTIONS = 256  # open connections at once; over it the one idle the longest is closed
REFUSED_LINGER = 1.0  # seconds a refused connection is drained after its 403, so it gets no RST
MAX_LINGERING = 64  # refused connections drained at once; more are closed at once
LOG_INTERVAL = 60.0  # seconds between two log lines about refused connections or failed accepts

logger = logging.getLogger("codex_portal")

REFUSED_TEXT = (
    "403 Forbidden: this connection came from another user of this machine, and codex-portal "
    "serves only the user who started it. It was refused and nothing was done.\n"
)


def _refused_response() -> bytes:
    body = REFUSED_TEXT.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *security_headers(),
    ]
    head = b"HTTP/1.1 403 Forbidden\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + body


REFUSED_RESPONSE = _refused_response()


class RateLimitedLog:
    """At most one log line per `interval` seconds; the next one says how many were left out."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.last = -interval
        self.skipped = 0

    def allow(self) -> tuple[bool, int]:
        """(whether to log now, how many lines were left out since the last one)."""
        now = time.monotonic()
        if now - self.last < self.interval:
            self.skipped += 1
            return False, 0
        skipped, self.skipped, self.last = self.skipped, 0, now
        return True, skipped


_refusals = RateLimitedLog()


def _log_refusal(uid: int | None) -> None:
    show, skipped = _refusals.allow()
    if not show:
        return
    who = f"uid {uid}" if uid is not None else "a socket whose owner could not be found"
    more = f"; {skipped} more refused since the last such line" if skipped else ""
    logger.warning(
        "refused a connection from another user of this machine (%s)%s; "
        "this line is shown at most once a minute",
        who,
        more,
    )


class AcceptErrorFilter(logging.Filter):
    """asyncio logs a traceback each time accept() fails for want of descriptors (each second, per
    listening socket, for as long as it lasts): one short line a minute instead."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = RateLimitedLog()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        show, skipped = self.limit.allow()
        if not show:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        why = (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else "out of resources"
        more = f" ({skipped} more since the last such line)" if skipped else ""
        record.msg = "cannot accept new connections for now: %s%s; this line is shown at most once a minute"
        record.args = (why, more)
        record.exc_info = None
        record.exc_text = None
        return True


ACCEPT_ERRORS = AcceptErrorFilter()


class PortalProtocol(H11Protocol):
    # Set for each server by `configured`; tests may lower `max_connections` before starting one.
    peer_check: ClassVar[bool] = False
    max_connections: ClassVar[int] = MAX_CONNECTIONS
    uid: ClassVar[int] = os.geteuid() if hasattr(os, "geteuid") else -1
    lingering: ClassVar[int] = 0  # refused connections being drained, across servers

    head_timer: asyncio.TimerHandle | None = None
    refused = False
    last_active = 0.0  # monotonic time of the connection's start or its last response

    @classmethod
    def configured(cls, *, peer_check: bool, max_connections: int) -> type[PortalProtocol]:
        """A subclass for one server: uvicorn instantiates it for each connection."""
        attributes = {"peer_check": peer_check, "max_connections": max_connections}
        return cast("type[PortalProtocol]", type(cls.__name__, (cls,), attributes))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.peer_check and not self._peer_is_ours(transport):
            self._refuse(transport)
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self.last_active = time.monotonic()
        if len(self.connections) > self.max_connections:
            self._make_room()
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # drained unread, never parsed
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head has arrived
            self._disarm()

    def on_response_complete(self) -> None:
        self.last_active = time.monotonic()
        self._arm()  # the next request on this connection gets the same deadline
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.refused:
            self.connections.discard(self)
            type(self).lingering -= 1
            return
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.refused:
            self.transport.close()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        event = h11.Response(status_code=400, headers=headers + security_headers(), reason=b"Bad Request")
        for out in (event, h11.Data(data=msg.encode("ascii", "replace")), h11.EndOfMessage()):
            data = self.conn.send(out)
            if data:
                self.transport.write(data)
        self.transport.close()

    # ---- the peer check ----
    def _peer_is_ours(self, transport: asyncio.BaseTransport) -> bool:
        local = transport.get_extra_info("sockname")
        remote = transport.get_extra_info("peername")
        uid = peers.peer_uid(local, remote) if local and remote else None
        if uid is not None and uid == self.uid:
            return True
        _log_refusal(uid)
        return False

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """A complete 403, then close; what the peer sent is drained unread for a moment (or until it
        closes), since closing a socket with unread bytes sends a reset that can destroy the 403."""
        assert isinstance(transport, asyncio.Transport)
        self.refused = True
        self.transport = transport
        self.connections.add(self)  # so that a server shutting down closes it too
        type(self).lingering += 1
        transport.write(REFUSED_RESPONSE)
        if self.lingering > MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer is gone already
            transport.close()
            return
        self.head_timer = self.loop.call_later(REFUSED_LINGER, transport.close)

    # ---- the connection cap ----
    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _make_room(self) -> None:
        """Over the cap: close the open connection idle the longest, or this one if none is idle."""
        open_ones = [
            conn
            for conn in self.connections
            if isinstance(conn, PortalProtocol) and not conn.refused and not conn.transport.is_closing()
        ]
        if len(open_ones) <= self.max_connections:
            return  # the excess is already closing
        idle = [conn for conn in open_ones if conn is not self and conn._idle()]
        victim = min(idle, key=lambda conn: conn.last_active) if idle else self
        victim._disarm()
        victim.transport.close()

    # ---- the head deadline ----
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
