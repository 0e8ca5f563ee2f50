"""Small parts several test modules share: a fake clock for the device pollers, a reader for a
pseudo-terminal, a port held by another program, and a second local user (`nobody`, through
setpriv)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
NOBODY_UID = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike the venv under some homes

needs_second_user = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or os.geteuid() != 0
    or shutil.which("setpriv") is None
    or not Path(SYSTEM_PYTHON).exists(),
    reason="needs Linux, root and setpriv to act as a second local user",
)


class FakeTime:
    """A clock and a sleep for the poller: the polls are real, the waiting is not. `on_sleep` is
    called with the number of sleeps so far (a person finishing after the Nth poll, say)."""

    def __init__(self, now: float = 0.0, on_sleep: Callable[[int], None] | None = None) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


def read_until(fd: int, wanted: bytes, timeout: float = 30.0) -> bytes:
    """Read a pty until `wanted` appears (or, for b"", until the other side closes)."""
    data, deadline = b"", time.monotonic() + timeout
    while not (wanted and wanted in data):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"timed out waiting for {wanted!r}; got {data!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process on the other side has closed it
            chunk = b""
        if not chunk:
            if wanted:
                raise AssertionError(f"closed before {wanted!r}; got {data!r}")
            break
        data += chunk
    return data


@contextlib.contextmanager
def held(port: int, host: str = "127.0.0.1") -> Iterator[None]:
    """`port` taken by a plain listening socket (or already taken by another program)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc  # held by something else: taken all the same
        yield
    finally:
        sock.close()
