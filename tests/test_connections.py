"""Descriptor exhaustion by any local user (issue 9, item 2).

1,100 idle connections (soft RLIMIT_NOFILE 1,024) made later requests fail and logged an accept
traceback per attempt. Now: the soft limit is raised to the hard one at start; open connections are
capped (`PortalProtocol.max_connections`, at most a quarter of the descriptors), the one idle the longest
closed first; asyncio's "socket.accept() out of system resource" line is shown once a minute.

- In process, the cap lowered: a flood of idle connections beyond it, then a normal request is
  answered at once; the server holds no more than the cap; the oldest went first; no log lines.
- `codex-portal serve` under `prlimit`: its soft limit is raised to the hard one; with only 64
  descriptors, 400 idle connections leave it serving (the cap follows the limit); and where
  descriptors run out all the same, stderr grows by one line, not a traceback a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import free_port
from tests.portal import PortalServer
from webapp import peers
from webapp.protocol import ACCEPT_ERRORS, PortalProtocol, RateLimitedLog
from webapp.server import connection_limits
from webapp.settings import Settings

TOKEN = "connections-launch-token-" + "c" * 32
CAP = 24  # lowered for the in-process test
OVER = 50  # idle connections beyond the cap
WAIT = 2.0  # seconds a normal request may take during a flood
PORTAL = Path(sys.executable).with_name("codex-portal")

linux_only = pytest.mark.skipif(not peers.available(), reason="counts connections in /proc/net/tcp")


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)  # (with a timeout set, Python would wait for data first)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def held_by_server(port: int) -> int:
    """Established connections whose server end is the portal's (its own sockets, per /proc)."""
    return sum(1 for row in peers.rows() if row.local[1] == port and row.state == 1 and row.inode)


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def idle_connections(port: int, count: int, *, half_heads: bool = True) -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        for number in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if half_heads and number % 2:  # a request head begun, never finished: idle all the same
                sock.sendall(f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n".encode())
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_connection_limits_follow_the_descriptor_limit() -> None:
    assert connection_limits(1 << 20, 256) == (256, 2048)
    assert connection_limits(4096, 256) == (256, 1269)
    assert connection_limits(1024, 256) == (256, 245)
    assert connection_limits(64, 256) == (16, 8)
    assert connection_limits(16, 256) == (8, 8)


@linux_only
def test_idle_flood_beyond_the_cap_closes_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(PortalProtocol, "max_connections", CAP)
    settings = Settings(
        config_path=tmp_path / "codex" / "config.toml",
        issuer="http://127.0.0.1:9",
        port=free_port(),
        open_browser=False,
    )
    caplog.set_level(logging.INFO)
    with PortalServer(settings, launch_token=TOKEN) as server:
        port = settings.port
        with idle_connections(port, CAP + OVER) as flood:
            until(lambda: sum(map(closed_by_server, flood)) >= OVER)
            assert held_by_server(port) <= CAP
            closed = [closed_by_server(sock) for sock in flood]
            assert sum(closed) == OVER, closed
            assert all(closed[:OVER]) and not any(closed[OVER:]), closed  # the oldest idle first
            with httpx2.Client(base_url=server.base_url, timeout=WAIT) as client:
                began = time.monotonic()
                assert client.get(server.launch_url).status_code == 303
                assert client.get("/").status_code == 200
                assert time.monotonic() - began < WAIT
                assert held_by_server(port) <= CAP
                assert closed_by_server(flood[OVER])  # room made for the client's connection
            # The server logged nothing but the two requests: no accept error, no traceback.
            server_side = ("asyncio", "uvicorn", "codex_portal")
            noise = [
                record
                for record in caplog.records
                if record.name.split(".")[0] in server_side and record.name != "codex_portal.access"
            ]
            assert noise == []


# ---- `codex-portal serve` under prlimit --------------------------------------------------------
needs_prlimit = pytest.mark.skipif(
    shutil.which("prlimit") is None or not PORTAL.exists() or not peers.available(),
    reason="needs Linux, prlimit and the installed codex-portal command",
)


@contextlib.contextmanager
def served(
    tmp_path: Path, nofile: str, command: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """`codex-portal serve` (or `command`) under `prlimit --nofile=...`: (process, port, stderr file)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_")}
    env["CODEX_HOME"] = str(tmp_path / "home")
    err = tmp_path / "stderr.txt"
    argv = command or [str(PORTAL), "serve"]
    with err.open("w") as err_file:
        proc = subprocess.Popen(
            ["prlimit", f"--nofile={nofile}", "--", *argv, "--no-browser", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            env=env,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, err.read_text()
        assert proc.stdout.readline().startswith(f"http://localhost:{port}/?token="), err.read_text()
        until(lambda: "machine" in err.read_text())  # the start-up lines, the last about the peer check
        yield proc, port, err
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def answers(port: int) -> bool:
    """Whether a request on a new connection is answered within WAIT seconds."""
    try:
        response = httpx2.get(f"http://localhost:{port}/api/status", timeout=WAIT)
    except httpx2.HTTPError:
        return False
    return response.status_code in (401, 403)  # no session: refused, but answered


@needs_prlimit
def test_serve_raises_its_soft_descriptor_limit(tmp_path: Path) -> None:
    with served(tmp_path, "256:4096") as (proc, _, err):
        assert open_files_limits(proc.pid) == (4096, 4096)
        assert "Connections from other users of this machine are refused." in err.read_text()


@needs_prlimit
def test_serve_with_64_descriptors_survives_an_idle_flood(tmp_path: Path) -> None:
    with served(tmp_path, "64:64") as (proc, port, err):
        assert open_files_limits(proc.pid) == (64, 64)
        before = err.read_text().count("\n")
        began = time.monotonic()
        with idle_connections(port, 400) as flood:
            # Not one SYN dropped and retried a second later: the kernel's queue holds the burst
            # that asyncio's small accept batches have not taken yet.
            assert time.monotonic() - began < 3
            until(lambda: sum(map(closed_by_server, flood)) >= 400 - 16)
            assert held_by_server(port) <= 16  # a quarter of the descriptors
            assert answers(port)
        assert answers(port)
        assert err.read_text().count("\n") - before <= 2  # the request log lines, nothing else


# Descriptors run out all the same (the cap patched away): one short line, not a traceback a second.
UNCAPPED = [
    sys.executable,
    "-c",
    "import sys, webapp.server, webapp.cli; webapp.server.connection_limits = lambda *a: (10**6, 2048); "
    "sys.exit(webapp.cli.main(['serve', *sys.argv[1:]]))",
]


@needs_prlimit
def test_accept_errors_are_one_line_a_minute(tmp_path: Path) -> None:
    with served(tmp_path, "64:64", UNCAPPED) as (_, port, err):
        before = err.read_text()
        with idle_connections(port, 120, half_heads=False):
            time.sleep(2.5)  # asyncio retries the accept every second
        after = err.read_text()[len(before) :]
    lines = after.splitlines()
    assert len(lines) == 1, after
    assert re.search(r"cannot accept new connections for now: too many open files", lines[0])
    assert "Traceback" not in after


def test_accept_error_filter_in_the_event_loop(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio's own call for a failed accept, 100 times: one record, one line, no traceback."""
    monkeypatch.setattr(ACCEPT_ERRORS, "limit", RateLimitedLog())
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addFilter(ACCEPT_ERRORS)
    loop = asyncio.new_event_loop()
    try:
        with socket.socket() as sock:
            error = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            for _ in range(100):
                context = {"message": "socket.accept() out of system resource", "exception": error}
                loop.call_exception_handler({**context, "socket": sock})
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.close()
        asyncio_logger.removeFilter(ACCEPT_ERRORS)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.getMessage() for r in records] == [
        "cannot accept new connections for now: too many open files; "
        "this line is shown at most once a minute",
        "something else",
    ]
    assert records[0].exc_info is None
