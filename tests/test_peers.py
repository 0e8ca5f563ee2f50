"""Another user of this machine (issue 9, items 1 and 7): the peer check and the lock sidecar.

Browsers send `localhost` cookies to every port, so a server run by another local user receives the
portal's session cookie as soon as the person's browser visits it. The portal refuses every
connection whose peer socket belongs to another uid (webapp/peers.py reads /proc/net/tcp{,6};
webapp/protocol.py answers a 403 before reading a byte), so the cookie is useless to that user.

- The /proc table parsing, on hand-written rows (IPv4, IPv6, IPv4-mapped, a reversed row, a
  TIME_WAIT row); the netlink lookup and the tables on live connections (IPv4, IPv6, mapped), a
  closed peer (its socket lingers as uid 0) and a listening socket never taken for the peer.
- The protocol's decision at the transport: a peer of another uid, or one not found, gets a
  complete 403 with the security headers and nothing it sent is parsed; ours is served.
- A second uid (`nobody`, through setpriv) replays the session cookie and the CSRF token from its
  own process, over 127.0.0.1, ::1 and an IPv4-mapped IPv6 socket: a 403 with the security headers
  each time, one log line for all of them, the config file byte-identical; the same bytes sent
  from our uid are served.
- The same in real Chromium: the person opens the portal, then a page served by `nobody` on
  another localhost port, which receives the cookie and replays it.
- With --allow-remote the check is off, and the start-up line says so.
- The lock sidecar: an existing loose lock file of ours becomes 0600; a lock held by another uid
  gives, within the lock timeout, an error naming that uid.

Everything that `nobody` must read or run lives in a `tempfile.mkdtemp()` folder (pytest's tmp_path
is under a 0700 folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser

from tests.conftest import free_port
from tests.portal import PortalServer
from tests.support import NOBODY, NOBODY_UID, SYSTEM_PYTHON, needs_second_user
from webapp import peers, protocol
from webapp.errors import ConfigError
from webapp.server import PEER_CHECK_ON, peer_check_line
from webapp.settings import Settings
from webapp.stores import ConfigTomlStore

ORIGINAL = '# mine\nmodel = "o3"\n\n[auth]\napi_key = "sk-person-0123456789abcdef"\n'
ATTACKER_KEY = "sk-attacker-0123456789wxyz"
PERSON_NEW_KEY = "sk-person-new-9876543210"
TOKEN = "peers-launch-token-" + "p" * 32
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

# ---- the /proc/net/tcp tables ------------------------------------------------------------------
HEADER4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
HEADER6 = (
    "  sl  local_address                         remote_address                        st tx_queue "
    "rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)


def row4(slot: int, local: str, remote: str, state: str, uid: int, inode: int) -> str:
    return (
        f"{slot:4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:5} "
        f"{0:8} {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


# The portal listens on 127.0.0.1:1455 (05AF); a client at 127.0.0.1:50000 (C350) owned by uid 1000.
TCP4 = (
    HEADER4
    + row4(0, "0100007F:05AF", "00000000:0000", "0A", 0, 1111)  # our listening socket
    + row4(1, "0100007F:05AF", "0100007F:C350", "01", 0, 2222)  # our end of the connection
    + row4(2, "0100007F:C350", "0100007F:05AF", "01", 1000, 3333)  # the peer's end
    + row4(3, "0100007F:C351", "0100007F:05AF", "06", 0, 0)  # TIME_WAIT: no owner, printed as uid 0
)
# ::1 port 1455 and a peer at [::1]:50002 (C352) of uid 1001; a mapped 127.0.0.1:50001 (C351) of uid 1002.
LOOP6 = "00000000000000000000000001000000"
MAPPED = "0000000000000000FFFF00000100007F"
TCP6 = (
    HEADER6
    + row4(0, f"{LOOP6}:05AF", f"{LOOP6}:C352", "01", 0, 4444)
    + row4(1, f"{LOOP6}:C352", f"{LOOP6}:05AF", "01", 1001, 5555)
    + row4(2, f"{MAPPED}:C351", f"{MAPPED}:05AF", "01", 1002, 6666)
)


def test_addresses_decode_and_encode() -> None:
    import ipaddress

    cases = {
        "0100007F": "127.0.0.1",
        "0101A8C0": "192.168.1.1",
        LOOP6: "::1",
        MAPPED: "::ffff:127.0.0.1",
        "B80D0120000000000000000001000000": "2001:db8::1",
    }
    for hex_text, text in cases.items():
        address = ipaddress.ip_address(text)
        assert peers.decode_address(hex_text) == address
        assert peers.encode_address(address) == hex_text
    assert peers.normalise("::ffff:127.0.0.1") == ipaddress.IPv4Address("127.0.0.1")
    assert peers.normalise("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")


def test_table_rows_parse() -> None:
    import ipaddress

    rows = peers.parse_table(TCP4)
    assert len(rows) == 4  # the header is not a row
    peer = rows[2]
    assert peer.local == (ipaddress.IPv4Address("127.0.0.1"), 50000)
    assert peer.remote == (ipaddress.IPv4Address("127.0.0.1"), 1455)
    assert (peer.state, peer.uid, peer.inode) == (1, 1000, 3333)
    six = peers.parse_table(TCP6)
    assert [(row.local[1], row.uid) for row in six] == [(1455, 0), (50002, 1001), (50001, 1002)]
    assert six[2].local[0] == ipaddress.IPv6Address("::ffff:127.0.0.1")
    assert peers.parse_line("garbage") is None
    assert peers.parse_line("   7: zz:1 00:0 01 0:0 0:0 0 5 0 9") is None


def test_peer_row_is_found_not_ours_nor_a_dead_one() -> None:
    import ipaddress

    ours = (ipaddress.IPv4Address("127.0.0.1"), 1455)
    v4 = ipaddress.IPv4Address("127.0.0.1")
    assert peers.uid_in_table(TCP4, ours, (v4, 50000), six=False) == 1000
    assert peers.uid_in_table(TCP4, ours, (v4, 50001), six=False) is None  # TIME_WAIT, inode 0
    assert peers.uid_in_table(TCP4, ours, (v4, 50009), six=False) is None  # not there
    # An IPv4 connection from an IPv6 socket: in tcp6, IPv4-mapped.
    assert peers.uid_in_table(TCP6, ours, (v4, 50001), six=True) == 1002
    six = (ipaddress.IPv6Address("::1"), 1455)
    assert peers.uid_in_table(TCP6, six, (ipaddress.IPv6Address("::1"), 50002), six=True) == 1001
    assert peers.uid_in_table(TCP4, six, (ipaddress.IPv6Address("::1"), 50002), six=False) is None


def test_peer_uid_from_both_tables(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP4)
    (tmp_path / "tcp6").write_text(TCP6)
    tables = (str(tmp_path / "tcp"), str(tmp_path / "tcp6"))
    assert peers.table_peer_uid(("127.0.0.1", 1455), ("127.0.0.1", 50000), tables) == 1000
    assert peers.table_peer_uid(("127.0.0.1", 1455), ("127.0.0.1", 50001), tables) == 1002  # from tcp6
    assert peers.table_peer_uid(("::ffff:127.0.0.1", 1455), ("::ffff:127.0.0.1", 50001), tables) == 1002
    assert peers.table_peer_uid(("::1", 1455, 0, 0), ("::1", 50002, 0, 0), tables) == 1001
    assert peers.table_peer_uid(("127.0.0.1", 1455), ("127.0.0.1", 50002), tables) is None
    assert peers.table_peer_uid(("127.0.0.1", 1455), ("::1", 50002), tables) is None  # families differ
    assert peers.table_peer_uid(("127.0.0.1", 1455), ("not an address", 1), tables) is None
    missing = (str(tmp_path / "none"), str(tmp_path / "none6"))
    assert peers.table_peer_uid(("127.0.0.1", 1455), ("127.0.0.1", 50000), missing) is None


@pytest.mark.skipif(not peers.available(), reason="no /proc/net/tcp here")
@pytest.mark.parametrize(
    ("family", "listen", "connect", "v6only"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1", True),
        (socket.AF_INET6, "::1", "::1", True),
        (socket.AF_INET, "127.0.0.1", "::ffff:127.0.0.1", False),  # an IPv6 socket, IPv4-mapped
    ],
    ids=["ipv4", "ipv6", "mapped"],
)
def test_live_connection_is_ours(family: int, listen: str, connect: str, v6only: bool) -> None:
    with socket.socket(family) as server:
        try:
            server.bind((listen, 0))
        except OSError:
            pytest.skip(f"no {listen} here")
        server.listen()
        client_family = socket.AF_INET6 if ":" in connect else socket.AF_INET
        with socket.socket(client_family) as client:
            if client_family == socket.AF_INET6:
                client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            client.connect((connect, server.getsockname()[1]))
            accepted, _ = server.accept()
            with accepted:
                ours, theirs = accepted.getsockname(), accepted.getpeername()
                assert peers.peer_uid(ours, theirs) == os.geteuid()  # netlink
                assert peers.table_peer_uid(ours, theirs) == os.geteuid()  # /proc/net/tcp{,6}
                # The text search agrees with a full parse of the tables.
                matching = [
                    row for row in peers.rows() if row.local[1] == theirs[1] and row.remote[1] == ours[1]
                ]
                assert [row.uid for row in matching] == [os.geteuid()]
                # A socket listening at the address and port asked for is not a peer (the kernel's
                # lookup falls back to one).
                assert peers.peer_uid(ours, (theirs[0], ours[1])) is None
                client.close()  # the peer's socket lingers without an owner, shown as uid 0: not trusted
                time.sleep(0.05)
                assert peers.peer_uid(ours, theirs) is None
                assert peers.table_peer_uid(ours, theirs) is None


@pytest.mark.skipif(not peers.available(), reason="no /proc/net/tcp here")
def test_tables_when_netlink_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object) -> None:
        raise PermissionError("netlink refused")

    monkeypatch.setattr(peers._diag, "uid", refused)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            accepted, _ = server.accept()
            with accepted:
                assert peers.peer_uid(accepted.getsockname(), accepted.getpeername()) == os.geteuid()


# ---- a second local user against the real server --------------------------------------------
# Run as `nobody` (or as us, to compare): plain sockets, so nothing but the bytes below is sent.
REPLAY = textwrap.dedent(
    r"""
    import json, re, socket, sys

    job = json.load(sys.stdin)
    port, cookie = job["port"], job["cookie"]

    def request(address, method, path, body=""):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.settimeout(5)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nCookie: {cookie}\r\n"
            f"Origin: http://localhost:{port}\r\nSec-Fetch-Site: same-origin\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            sock.connect((address, port))
            sock.sendall((head + body).encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            return {"address": address, "path": path, "error": str(exc)}
        finally:
            sock.close()
        head, _, content = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
        return {"address": address, "method": method, "path": path, "status": status,
                "headers": headers, "body": content.decode("utf-8", "replace")}

    results = []
    csrf = job.get("csrf") or "guessed-csrf-token"
    for address in job["addresses"]:
        page = request(address, "GET", "/")
        results.append(page)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.get("body", ""))
        if found:  # what an attacker does with a page it can read
            csrf = found.group(1)
        results.append(request(address, "GET", "/api/status"))
        for path, form in job["posts"]:
            results.append(request(address, "POST", path, form.replace("CSRF", csrf)))
    for _ in range(job.get("flood", 0)):
        results.append(request(job["addresses"][0], "GET", "/api/status"))
    print(json.dumps(results))
    """
)


def run_as(user: list[str], job: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    script = folder / "replay.py"
    script.write_text(REPLAY)
    script.chmod(0o644)
    done = subprocess.run(
        [*user, SYSTEM_PYTHON, str(script)],
        input=json.dumps(job),  # on stdin: the cookie never reaches argv
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A 0755 folder `nobody` can read."""
    folder = Path(tempfile.mkdtemp(prefix="codex-portal-peers-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_log_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal log line is rate-limited process-wide: each test starts with a clean slate."""
    monkeypatch.setattr(protocol, "_refusals", protocol.RateLimitedLog())


def portal_settings(tmp_path: Path, **values: Any) -> Settings:
    config = tmp_path / "codex" / "config.toml"
    config.parent.mkdir(mode=0o700)
    config.write_text(ORIGINAL)
    config.chmod(0o600)
    return Settings(
        config_path=config, issuer="http://127.0.0.1:9", port=free_port(), open_browser=False, **values
    )


def loopback_addresses(server: PortalServer) -> list[str]:
    """127.0.0.1, ::1 when the portal listens there, and 127.0.0.1 from an IPv6 socket (mapped)."""
    addresses = ["127.0.0.1", "::ffff:127.0.0.1"]
    with socket.socket(socket.AF_INET6) as probe, contextlib.suppress(OSError):
        probe.bind(("::1", 0))  # (a connection to find out would be refused, and logged)
        addresses.append("::1")
    return addresses


@contextlib.contextmanager
def session(server: PortalServer) -> Iterator[tuple[httpx2.Client, str, str]]:
    """The person's client after the launch URL: (client, Cookie header value, CSRF token)."""
    with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=10) as client:
        assert client.get(server.launch_url).status_code == 303
        page = client.get("/")
        assert page.status_code == 200
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        yield client, cookie, found.group(1)


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "codex_portal" and "another user of this machine" in record.getMessage()
    ]


def assert_refused(result: dict[str, Any]) -> None:
    assert result.get("status") == 403, result
    headers = result["headers"]
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, result)
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", "")
    assert headers.get("connection") == "close"
    assert "another user of this machine" in result["body"], result


POSTS = [
    ["/api-key", f"csrf_token=CSRF&api_key={ATTACKER_KEY}"],
    ["/logout", "csrf_token=CSRF"],
]


@needs_second_user
@pytest.mark.skipif(not peers.available(), reason="no /proc/net/tcp here")
def test_another_uid_is_refused_and_ours_served(
    tmp_path: Path, open_folder: Path, caplog: pytest.LogCaptureFixture, fresh_log_limit: None
) -> None:
    settings = portal_settings(tmp_path)
    caplog.set_level(logging.INFO, logger="codex_portal")
    with PortalServer(settings, launch_token=TOKEN) as server, session(server) as (client, cookie, csrf):
        addresses = loopback_addresses(server)
        before = settings.config_path.read_bytes()
        # Both secrets (the cookie and the CSRF token) in hand: refused all the same, before any byte.
        job = {"port": settings.port, "cookie": cookie, "csrf": csrf, "addresses": addresses}
        replies = run_as(NOBODY, {**job, "posts": POSTS, "flood": 40}, open_folder)
        assert len(replies) == len(addresses) * (2 + len(POSTS)) + 40
        for reply in replies:
            assert_refused(reply)
        assert settings.config_path.read_bytes() == before
        assert client.get("/").status_code == 200  # the person's session is still there
        lines = refusal_lines(caplog)
        assert len(lines) == 1, lines  # dozens refused, one line
        assert f"uid {NOBODY_UID}" in lines[0] and cookie not in lines[0]

        # The very same bytes from our uid are served: the uid alone made the difference.
        ours = run_as([], {**job, "addresses": addresses[:1], "posts": POSTS[:1]}, open_folder)
        assert [reply["status"] for reply in ours] == [200, 200, 303], ours
        assert ATTACKER_KEY in settings.config_path.read_text()


@needs_second_user
def test_check_is_off_with_allow_remote(tmp_path: Path, open_folder: Path) -> None:
    settings = portal_settings(tmp_path, allow_remote=True)
    assert peer_check_line(settings).startswith("Note: connections from other users of this machine are NOT")
    assert "--allow-remote" in peer_check_line(settings)
    with PortalServer(settings, launch_token=TOKEN) as server, session(server) as (_, cookie, _):
        job = {"port": settings.port, "cookie": cookie, "addresses": ["127.0.0.1"], "posts": []}
        replies = run_as(NOBODY, job, open_folder)
        assert [reply["status"] for reply in replies] == [200, 200]  # what the start-up line warns of


def test_start_up_line_when_the_check_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(config_path=tmp_path / "config.toml")
    monkeypatch.setattr(peers, "available", lambda: True)
    assert peer_check_line(settings) == PEER_CHECK_ON
    monkeypatch.setattr(peers, "available", lambda: False)
    line = peer_check_line(settings)
    assert "NOT refused" in line and "does not show which user" in line


# ---- the protocol's decision, at the transport ----------------------------------------------------
class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.extra = {"sockname": ("127.0.0.1", 1455), "peername": peer, "socket": None}
        self.written = b""
        self.eof = self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def connect(
    monkeypatch: pytest.MonkeyPatch, uid: int | None, request: bytes = b""
) -> tuple[protocol.PortalProtocol, FakeTransport]:
    """A connection whose peer, as the kernel tells it, belongs to `uid` (None: no such socket)."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("a request was read")

    monkeypatch.setattr(peers, "peer_uid", lambda local, remote: uid)
    loop = asyncio.new_event_loop()
    try:
        kind = protocol.PortalProtocol.configured(peer_check=True, max_connections=8)
        conn = kind(config=Config(app), server_state=ServerState(), app_state={}, _loop=loop)
        transport = FakeTransport(("127.0.0.1", 50000))
        conn.connection_made(transport)
        if request:
            conn.data_received(request)
        conn._disarm()
    finally:
        loop.close()
    return conn, transport


@pytest.mark.parametrize("uid", [None, NOBODY_UID], ids=["peer-not-found", "other-uid"])
def test_unknown_or_other_peer_gets_the_403_before_any_byte_is_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_log_limit: None, uid: int | None
) -> None:
    conn, transport = connect(monkeypatch, uid, b"POST /logout HTTP/1.1\r\nHost: localhost:1455\r\n\r\n")
    assert conn.refused and transport.eof  # the 403, then our side shut: drained, closed soon
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    for name, value in SECURITY_HEADERS.items():
        assert f"\r\n{name}: {value}".encode() in head
    assert f"content-length: {len(body)}".encode() in head
    assert b"another user of this machine" in body
    assert conn.cycle is None  # what it sent was drained, never parsed
    who = f"uid {uid}" if uid is not None else "a socket whose owner could not be found"
    assert [f"({who})" in line for line in refusal_lines(caplog)] == [True]


def test_our_own_peer_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, transport = connect(monkeypatch, os.geteuid())
    assert not conn.refused and transport.written == b"" and not transport.eof
    assert conn in conn.connections


# ---- the same in Chromium: a page of another user's receives the cookie and replays it --------
EVIL_SERVER = textwrap.dedent(
    r"""
    import http.server, json, os, subprocess, sys

    portal_port, replay = int(sys.argv[1]), sys.argv[2]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            cookie = self.headers.get("Cookie", "")
            posts = [["/api-key", "csrf_token=CSRF&api_key=ATTACKER"], ["/logout", "csrf_token=CSRF"]]
            job = {"port": portal_port, "cookie": cookie, "csrf": None, "flood": 0,
                   "addresses": ["127.0.0.1"], "posts": posts}
            done = subprocess.run([sys.executable, replay], input=json.dumps(job),
                                  capture_output=True, text=True, timeout=60)
            print(json.dumps({"uid": os.getuid(), "cookie": cookie, "replies": json.loads(done.stdout)}),
                  flush=True)
            body = b"<!doctype html><title>elsewhere</title><p>nothing to see</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.handle_request()
    """
)


@needs_second_user
@pytest.mark.skipif(not peers.available(), reason="no /proc/net/tcp here")
def test_chromium_cookie_leaked_to_another_user_is_useless(
    tmp_path: Path, open_folder: Path, browser: Browser, fresh_log_limit: None
) -> None:
    settings = portal_settings(tmp_path)
    (open_folder / "replay.py").write_text(REPLAY)
    evil = open_folder / "evil.py"
    evil.write_text(EVIL_SERVER.replace("ATTACKER", ATTACKER_KEY))
    for script in (evil, open_folder / "replay.py"):
        script.chmod(0o644)
    with PortalServer(settings, launch_token=TOKEN) as server:
        context = browser.new_context()
        try:
            page = context.new_page()
            opened = page.goto(server.launch_url)  # through the 303, with the cookie
            assert opened is not None and opened.status == 200
            assert "sk-…cdef" in page.content()  # the person's key, as the status page hints it
            before = settings.config_path.read_bytes()
            other = subprocess.Popen(
                [*NOBODY, SYSTEM_PYTHON, str(evil), str(settings.port), str(open_folder / "replay.py")],
                stdout=subprocess.PIPE,
                text=True,
                cwd="/",
            )
            try:
                assert other.stdout is not None
                evil_port = int(other.stdout.readline())
                # Any page the person visits can send the browser there once; here, the address bar.
                page.goto(f"http://localhost:{evil_port}/")
                report = json.loads(other.stdout.readline())
            finally:
                other.kill()
                other.communicate(timeout=10)  # (closes the pipe)
            assert report["uid"] == NOBODY_UID
            # The browser did hand the portal's session cookie to the other user's server ...
            assert f"codex_portal_{settings.port}=" in report["cookie"]
            # ... and every replay of it was refused, the file untouched.
            assert len(report["replies"]) == 4
            for reply in report["replies"]:
                assert_refused(reply)
            assert settings.config_path.read_bytes() == before
            # The person's own page still works, and so does a change made from it.
            again = page.goto(server.base_url + "/")
            assert again is not None and again.status == 200
            assert "sk-…cdef" in page.content()
            page.fill("#api_key", PERSON_NEW_KEY)
            page.get_by_role("button", name="Save API key").click()
            page.wait_for_load_state()
            assert f'api_key = "{PERSON_NEW_KEY}"' in settings.config_path.read_text()
        finally:
            context.close()


# ---- the lock sidecar (item 7) -----------------------------------------------------------------
KEY = "sk-test-0123456789abcdef"


def test_existing_loose_lock_file_of_ours_becomes_private(tmp_path: Path) -> None:
    store = ConfigTomlStore(tmp_path / "config.toml", lock_timeout=1)
    store.lock_path.touch()
    store.lock_path.chmod(0o644)
    store.save_api_key(KEY)
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600
    fresh = ConfigTomlStore(tmp_path / "other" / "config.toml", lock_timeout=1)
    fresh.save_api_key(KEY)
    assert stat.S_IMODE(fresh.lock_path.stat().st_mode) == 0o600  # created so


@needs_second_user
def test_lock_file_of_another_user_is_left_as_it_is(open_folder: Path) -> None:
    store = ConfigTomlStore(open_folder / "config.toml", lock_timeout=1)
    store.lock_path.touch()
    store.lock_path.chmod(0o644)
    os.chown(store.lock_path, NOBODY_UID, NOBODY_UID)
    store.save_api_key(KEY)  # nobody holds it: taken, and not ours to change
    st = store.lock_path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY_UID, 0o644)


HOLD_LOCK = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644); " + (
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
)


@contextlib.contextmanager
def lock_held(user: list[str], lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen(
        [*user, SYSTEM_PYTHON, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.communicate(timeout=10)


@needs_second_user
def test_lock_held_by_another_user_is_named(open_folder: Path) -> None:
    open_folder.chmod(0o777)  # so that nobody can create its lock file there
    store = ConfigTomlStore(open_folder / "config.toml", lock_timeout=0.5)
    with lock_held(NOBODY, store.lock_path) as holder:
        assert store.lock_path.stat().st_uid == NOBODY_UID
        began = time.monotonic()
        with pytest.raises(ConfigError) as info:
            store.save_api_key(KEY)
        assert time.monotonic() - began < 3
    assert info.value.message == (
        f"{store.path} is locked by another process "
        f"(process {holder.pid} of uid {NOBODY_UID}, another user of this machine)"
    )
    assert not store.path.exists()


def test_lock_held_by_one_of_our_processes_names_the_process(tmp_path: Path) -> None:
    store = ConfigTomlStore(tmp_path / "config.toml", lock_timeout=0.3)
    with lock_held([], store.lock_path) as holder:
        with pytest.raises(ConfigError) as info:
            store.save_api_key(KEY)
    assert info.value.message == f"{store.path} is locked by another process (process {holder.pid})"


def test_lock_holder_from_proc_locks_and_the_file_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "config.toml.lock"
    lock.touch()
    st = lock.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    table = tmp_path / "locks"
    table.write_text(
        f"1: POSIX  ADVISORY  WRITE 777 {inode} 0 EOF\n"
        f"2: FLOCK  ADVISORY  WRITE {os.getpid()} 00:00:{st.st_ino + 1} 0 EOF\n"
        f"2: -> FLOCK  ADVISORY  WRITE 999 {inode} 0 EOF\n"
    )
    assert peers.flock_holder(st, str(table)) == (777, peers.process_uid(777))
    table.write_text(f"2: -> FLOCK  ADVISORY  WRITE 999 {inode} 0 EOF\n")  # a waiter holds nothing
    assert peers.flock_holder(st, str(table)) is None
    assert peers.process_uid(os.getpid()) == os.getuid()
    # No holder to be seen: the lock file's owner, when it is someone else.
    monkeypatch.setattr(peers, "flock_holder", lambda st: None)
    assert peers.lock_holder(lock) == ""
    monkeypatch.setattr(os, "geteuid", lambda: st.st_uid + 1)
    assert peers.lock_holder(lock) == (
        f" (the lock file belongs to uid {st.st_uid}, another user of this machine)"
    )
