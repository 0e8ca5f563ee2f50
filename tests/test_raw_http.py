"""Raw HTTP at the socket against the real uvicorn server (issue "Hardening", part 2).

Every request here is written byte by byte on a plain `socket`, so no client library normalises it
(one Host header, a well-formed target, a Content-Length that matches): the portal is met the way a
hostile local process, or a DNS-rebinding page's browser, can meet it. The answers are parsed with
`http.client.HTTPResponse`, which only reads.

What is pinned down, table by table:
- Host: only `localhost`, `127.0.0.1` and `[::1]` with the serving port are served; every other
  spelling (foreign names, other or no port, trailing dot, numeric and IPv6 spellings of loopback,
  two Host headers, none, absolute-form targets, X-Forwarded-*/Forwarded spoofing) is refused, and a
  refused request never spends the launch token, never sets a cookie and never reflects what it sent.
- CORS: no `Access-Control-Allow-*` header on any route, preflight or not.
- Methods x routes: nothing but POST with the session and its CSRF token changes the config file.
- Content types on the actions: no change, a clear 4xx, never a traceback.
- Bodies and heads over the caps are refused early, without buffering what the client sends.
- Slow clients do not stall the portal.
- Every answer carries the security headers, no `Server:` header, no stack trace, no secret.

Found by this suite and fixed (webapp/protocol.py, webapp/security.py, webapp/app.py): uvicorn gave no
deadline to a request head (slowloris) and kept draining an announced body after its 413; FastAPI's
413 for a declared Content-Length over the cap and uvicorn's own 400 for a request h11 cannot parse
were written past SecurityMiddleware, without the security headers.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import select
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import free_port
from tests.portal import PortalServer
from webapp.settings import Settings

CAP = 16 * 1024  # the request body cap the README promises
TOKEN = "raw-http-launch-token-" + "q" * 32
ORIGINAL = b'# edited by hand\nmodel = "o3"  # keep me\n\n[auth]\napi_key = "sk-original-0123456789abcd"\n'
ATTACKER_KEY = "sk-attacker-0123456789wxyz"
WAIT = 2.0  # seconds any answer may take
IO_TIMEOUT = 5.0  # a socket operation that blocks longer than this fails the test
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
STACK_TRACE = (b"Traceback", b'File "', b'.py", line', b"site-packages", b"Internal Server Error")
# Values the spoofing headers carry: none may come back in any answer.
SPOOF_MARKERS = (b"evil", b"203.0.113", b"https://")
SPOOF_HEADERS = [
    ("X-Forwarded-Host", "xfh.evil.example"),
    ("X-Forwarded-For", "203.0.113.77"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Server", "xfs.evil.example"),
    ("Forwarded", "for=203.0.113.77;host=fwd.evil.example;proto=https"),
    ("X-Real-IP", "203.0.113.78"),
    ("X-Original-Host", "xoh.evil.example"),
    ("X-Host", "xh.evil.example"),
    ("X-Original-URL", "/api-key"),
    ("X-Rewrite-URL", "/logout"),
]


# ---- raw HTTP ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def exposed(self) -> bytes:
        """Everything the answer shows, but the one header that legitimately carries the session."""
        head = "".join(f"{k}: {v}\n" for k, v in self.headers if k.lower() != "set-cookie")
        return head.encode("latin-1") + self.body


def head(
    method: str,
    target: str,
    host: str | None,
    headers: Sequence[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    """A request head exactly as written: one Host line (or none), then `headers`, in order."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(port: int, address: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    try:
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def read_reply(sock: socket.socket, method: str = "GET") -> Reply:
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        response.close()


def exchange(port: int, data: bytes, method: str = "GET", address: str = "127.0.0.1") -> Reply:
    with connect(port, address) as sock:
        sock.sendall(data)
        return read_reply(sock, method)


def wait_readable(sock: socket.socket, seconds: float) -> bool:
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True once the server has closed (EOF or reset) within `seconds`; bytes it sends are skipped."""
    deadline = time.monotonic() + seconds
    while True:
        if not wait_readable(sock, max(0.0, deadline - time.monotonic())):
            return False
        try:
            if not sock.recv(65536):
                return True
        except ConnectionError:
            return True


def rss_mib() -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match
    return int(match.group(1)) / 1024


# ---- what every answer must look like ----------------------------------------------------------
def assert_no_leak(reply: Reply, secrets: Sequence[str] = ()) -> None:
    """No 500, no Server header, no CORS grant, no stack trace, no secret: for every answer."""
    assert reply.status != 500, reply
    assert reply.get("server") is None, reply.headers
    assert not [k for k, _ in reply.headers if k.lower().startswith("access-control-")], reply.headers
    for marker in STACK_TRACE:
        assert marker not in reply.body, (marker, reply.body[:300])
    for secret in (TOKEN, *secrets):
        assert secret.encode() not in reply.exposed(), "a secret came back in the answer"


def assert_clean(reply: Reply, secrets: Sequence[str] = ()) -> None:
    """The portal's own answers: the security headers as well."""
    for name, value in SECURITY_HEADERS.items():
        assert reply.get(name) == value, (name, reply.status, reply.headers)
    csp = reply.get("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp
    assert_no_leak(reply, secrets)


# ---- the portal --------------------------------------------------------------------------------
@dataclass
class Portal:
    port: int
    config: Path
    session: str = field(default="", repr=False)
    csrf: str = field(default="", repr=False)

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"

    @property
    def cookie(self) -> str:
        return f"codex_portal_{self.port}={self.session}"

    @property
    def secrets(self) -> list[str]:
        return [self.session] if self.session else []

    def send(self, data: bytes, method: str = "GET") -> Reply:
        return exchange(self.port, data, method)

    def fill(self, template: str) -> bytes:
        return template.format(
            host=self.host, port=self.port, other=self.port + 1, token=TOKEN, cookie=self.cookie
        ).encode()


@contextlib.contextmanager
def running_portal(folder: Path) -> Iterator[Portal]:
    """The real server (uvicorn on loopback, as `codex-portal serve` runs it) on a config file."""
    config = folder / "codex" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_bytes(ORIGINAL)
    port = free_port()
    # Nobody listens on port 9: an action that reaches the provider fails at once.
    settings = Settings(
        config_path=config, issuer="http://127.0.0.1:9", port=port, open_browser=False, timeout=2
    )
    with PortalServer(settings, launch_token=TOKEN):
        yield Portal(port=port, config=config)


def open_session(portal: Portal, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    opened = portal.send(head("GET", f"/?token={TOKEN}", portal.host, headers))
    assert opened.status == 303, opened
    match = re.match(rf"codex_portal_{portal.port}=([^;]+)", opened.get("set-cookie") or "")
    assert match, opened.headers
    portal.session = match.group(1)
    page = portal.send(head("GET", "/", portal.host, [("Cookie", portal.cookie)]))
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page.body)
    assert page.status == 200 and csrf, page
    portal.csrf = csrf.group(1).decode()
    return opened


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """One server for the module, with a browser session opened by its launch link."""
    with running_portal(tmp_path_factory.mktemp("raw-http")) as running:
        open_session(running)
        yield running


@pytest.fixture
def config(portal: Portal) -> Iterator[Path]:
    """The config file, reset to the user's original bytes before and after the test."""
    portal.config.write_bytes(ORIGINAL)
    yield portal.config
    portal.config.write_bytes(ORIGINAL)


def form(portal: Portal, **extra: str) -> bytes:
    return urlencode({"csrf_token": portal.csrf, "api_key": ATTACKER_KEY, **extra}).encode()


def post(
    portal: Portal,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (),
    *,
    host: str | None = None,
    content_type: str | None = "application/x-www-form-urlencoded",
    cookie: bool = True,
    length: int | None = None,
) -> bytes:
    """A POST as a form sends it, with the session cookie; `length` declares another Content-Length."""
    lines = [("Cookie", portal.cookie)] if cookie else []
    if content_type is not None:
        lines.append(("Content-Type", content_type))
    lines += headers
    lines.append(("Content-Length", str(len(body) if length is None else length)))
    return head("POST", path, host or portal.host, lines) + body


# ---- Host ---------------------------------------------------------------------------------------
REFUSED_HOSTS = [
    "evil.example",
    "evil.example:{port}",
    "evil.localhost:{port}",
    "localhost.evil.example:{port}",
    "localhost",
    "localhost:",
    "localhost:{other}",
    "localhost:0{port}",
    "localhost:{port}:{port}",
    "localhost.:{port}",
    "localhost.",
    "LOCALHOST.:{port}",
    "localhost.localdomain:{port}",
    "127.0.0.1",
    "127.0.0.1:{other}",
    "127.0.0.2:{port}",
    "127.1:{port}",
    "127.0.1:{port}",
    "127.000.000.001:{port}",
    "2130706433:{port}",
    "0x7f000001:{port}",
    "0x7f.0.0.1:{port}",
    "017700000001:{port}",
    "0177.0.0.1:{port}",
    "0.0.0.0:{port}",
    "0:{port}",
    "[::1]",
    "[::1]:{other}",
    "::1:{port}",
    "[0:0:0:0:0:0:0:1]:{port}",
    "[0000::1]:{port}",
    "[::ffff:127.0.0.1]:{port}",
    "[::ffff:7f00:1]:{port}",
    "[::]:{port}",
    "[::1%25lo]:{port}",
    "localhost:{port}@evil.example",
    "evil.example@localhost:{port}",
    "localhost:{port}/evil",
    "localhost:{port},evil.example",
    "localhost:{port} evil.example",
    "localhost:{port}#",
    "l\u043ecalhost:{port}",  # Cyrillic o, sent as UTF-8
    "",
]
SERVED_HOSTS = [
    "localhost:{port}",
    "LOCALHOST:{port}",
    "LocalHost:{port}",
    "127.0.0.1:{port}",
    "[::1]:{port}",
    "   localhost:{port}   ",  # optional whitespace around a header value is not part of it
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_a_foreign_host_is_refused(portal: Portal, host: str) -> None:
    value = host.format(port=portal.port, other=portal.port + 1)
    reply = portal.send(head("GET", f"/?token={TOKEN}", value, [("Cookie", portal.cookie)]))
    assert reply.status == 400, reply
    assert b"Invalid Host header" in reply.body
    assert not reply.all("set-cookie")
    assert b"evil" not in reply.exposed()
    assert_clean(reply, portal.secrets)


@pytest.mark.parametrize("host", SERVED_HOSTS)
def test_the_portals_own_host_is_served(portal: Portal, host: str) -> None:
    value = host.format(port=portal.port)
    reply = portal.send(head("GET", "/", value, [("Cookie", portal.cookie)]))
    assert reply.status == 200, reply
    assert b'name="csrf_token"' in reply.body
    assert_clean(reply, portal.secrets)


@dataclass(frozen=True)
class Special:
    """A request whose oddity is not just the Host value."""

    template: str
    statuses: frozenset[int]
    by_uvicorn: bool = False  # refused by uvicorn's parser (h11) before the portal sees it


SPECIAL_REFUSED = {
    "HTTP/1.0 without Host": Special(
        "GET /?token={token} HTTP/1.0\r\nCookie: {cookie}\r\n\r\n", frozenset({400})
    ),
    "HTTP/1.1 without Host": Special(
        "GET /?token={token} HTTP/1.1\r\nCookie: {cookie}\r\n\r\n", frozenset({400}), by_uvicorn=True
    ),
    "two Host headers, ours first": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
        by_uvicorn=True,
    ),
    "two Host headers, ours last": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: evil.example\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
        by_uvicorn=True,
    ),
    "two Host headers, both ours": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
        by_uvicorn=True,
    ),
    "Host folded onto a second line": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: {host}\r\n evil.example\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
    ),
    "space before the colon of Host": Special(
        "GET /?token={token} HTTP/1.1\r\nHost : {host}\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
        by_uvicorn=True,
    ),
    # uvicorn hands an absolute-form target to the app as the path ("http://evil.example/"), which
    # no route matches: the page is never served for it. A 400 would do as well.
    "absolute-form foreign target, our Host": Special(
        "GET http://evil.example/?token={token} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400, 404}),
    ),
    "absolute-form our target, foreign Host": Special(
        "GET http://{host}/?token={token} HTTP/1.1\r\nHost: evil.example\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
    ),
    "absolute-form our target and Host": Special(
        "GET http://{host}/?token={token} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400, 404}),
    ),
    "authority-form CONNECT": Special(
        "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n", frozenset({400, 404, 405})
    ),
    "asterisk-form OPTIONS": Special(
        "OPTIONS * HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n", frozenset({400, 404, 405})
    ),
    "X-Forwarded-Host ours, Host foreign": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: {host}\r\n"
        "Cookie: {cookie}\r\n\r\n",
        frozenset({400}),
    ),
    "Forwarded host=ours, Host foreign": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: evil.example\r\nForwarded: for=127.0.0.1;host={host};"
        "proto=http\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
    ),
    "X-Original-Host and X-Host ours, Host foreign": Special(
        "GET /?token={token} HTTP/1.1\r\nHost: evil.example\r\nX-Original-Host: {host}\r\n"
        "X-Host: {host}\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
    ),
    "X-Forwarded-* loopback, Host foreign over HTTP/1.0": Special(
        "GET /?token={token} HTTP/1.0\r\nHost: evil.example\r\nX-Forwarded-Host: {host}\r\n"
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nCookie: {cookie}\r\n\r\n",
        frozenset({400}),
    ),
}


@pytest.mark.parametrize("case", SPECIAL_REFUSED.values(), ids=SPECIAL_REFUSED.keys())
def test_odd_requests_are_not_served(portal: Portal, case: Special) -> None:
    method = case.template.split(" ", 1)[0]
    reply = portal.send(portal.fill(case.template), method)
    assert reply.status in case.statuses, reply
    assert not reply.all("set-cookie")
    assert b"evil" not in reply.exposed()
    if case.by_uvicorn:
        assert reply.get("connection") == "close"
    assert_clean(reply, portal.secrets)


SERVED_ODDITIES = {
    "HTTP/1.0 with our Host": "GET / HTTP/1.0\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n",
    "lower-case header name": "GET / HTTP/1.1\r\nhost: {host}\r\nCookie: {cookie}\r\n\r\n",
}


@pytest.mark.parametrize("template", SERVED_ODDITIES.values(), ids=SERVED_ODDITIES.keys())
def test_legitimate_spellings_are_served(portal: Portal, template: str) -> None:
    reply = portal.send(portal.fill(template))
    assert reply.status == 200, reply
    assert_clean(reply, portal.secrets)


@pytest.mark.parametrize(
    "spoof", [[h] for h in SPOOF_HEADERS] + [SPOOF_HEADERS], ids=[h for h, _ in SPOOF_HEADERS] + ["all"]
)
def test_forwarding_headers_change_nothing_and_are_not_reflected(
    portal: Portal, spoof: list[tuple[str, str]]
) -> None:
    headers = [("Cookie", portal.cookie), *spoof]
    page = portal.send(head("GET", "/", portal.host, headers))
    assert page.status == 200 and b'name="csrf_token"' in page.body, page  # the status page, not another
    status = portal.send(head("GET", "/api/status", portal.host, headers))
    assert status.status == 200 and b'"signed_in"' in status.body, status
    refused = portal.send(head("GET", "/", "evil.example", headers))
    assert refused.status == 400, refused
    for reply in (page, status, refused):
        for marker in SPOOF_MARKERS:
            assert marker not in reply.exposed(), (marker, reply.status)
        assert_clean(reply, portal.secrets)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_the_host_check_is_the_same_on_both_loopback_sockets(portal: Portal, address: str) -> None:
    try:
        connect(portal.port, address).close()
    except OSError:
        pytest.skip(f"no {address} loopback on this machine (the portal binds it when there is one)")
    cases = {portal.host: 200, f"[::1]:{portal.port}": 200, f"127.0.0.1:{portal.port}": 200}
    cases.update({"evil.example": 400, f"evil.example:{portal.port}": 400, "[::1]": 400})
    for host, expected in cases.items():
        reply = exchange(portal.port, head("GET", "/", host, [("Cookie", portal.cookie)]), address=address)
        assert reply.status == expected, (host, reply)
        assert_clean(reply, portal.secrets)


def _refused_requests(portal: Portal) -> list[tuple[str, bytes]]:
    """Every request the tables above refuse, each carrying the launch token."""
    requests = [
        (host, head("GET", f"/?token={TOKEN}", host.format(port=portal.port, other=portal.port + 1)))
        for host in REFUSED_HOSTS
    ]
    requests += [(name, portal.fill(case.template)) for name, case in SPECIAL_REFUSED.items()]
    spoofed = head("GET", f"/?token={TOKEN}", "evil.example", SPOOF_HEADERS)
    requests.append(("spoofed forwarding headers", spoofed))
    for method in ("HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW"):
        requests.append((method, head(method, f"/?token={TOKEN}", portal.host)))
    preflight = [("Origin", "http://evil.example"), ("Access-Control-Request-Method", "GET")]
    requests.append(("preflight", head("OPTIONS", f"/?token={TOKEN}", portal.host, preflight)))
    oversized = [("Content-Length", str(1 << 30)), ("Content-Type", "application/x-www-form-urlencoded")]
    requests.append(("oversized", head("POST", f"/?token={TOKEN}", portal.host, oversized)))
    return requests


def test_refused_requests_never_spend_the_launch_token_or_set_a_cookie(tmp_path: Path) -> None:
    with running_portal(tmp_path) as fresh:
        requests = _refused_requests(fresh)
        for name, data in requests:
            reply = fresh.send(data, data.split(b" ", 1)[0].decode())
            assert reply.status >= 400, (name, reply)
            assert not reply.all("set-cookie"), name
            assert_no_leak(reply)
        # The token still opens the session, once; forwarding headers do not bend the redirect.
        opened = open_session(fresh, SPOOF_HEADERS)
        assert opened.get("location") == "/"
        cookie = opened.get("set-cookie") or ""
        assert "HttpOnly" in cookie and "Secure" not in cookie and "evil" not in cookie
        for marker in SPOOF_MARKERS:
            assert marker not in opened.exposed()
        assert_clean(opened, fresh.secrets)
        again = fresh.send(head("GET", f"/?token={TOKEN}", fresh.host))
        assert again.status == 403 and not again.all("set-cookie"), again
    assert len(requests) > 60


# ---- CORS ---------------------------------------------------------------------------------------
ALL_ROUTES = [
    "/",
    "/login",
    "/api-key",
    "/logout",
    "/refresh",
    "/device",
    "/device/cancel",
    "/api/status",
    "/api/device",
    "/auth/callback",
    "/auth/done",
    "/static/portal.css",
    "/nowhere",
]
PREFLIGHTS = [
    ("http://evil.example", "POST", "content-type"),
    ("null", "POST", ""),
    ("http://localhost:{other}", "DELETE", "x-csrf-token"),
    ("http://{host}", "PUT", "content-type"),  # not even our own origin is granted anything
]


@pytest.mark.parametrize("origin,method,request_headers", PREFLIGHTS)
@pytest.mark.parametrize("path", ALL_ROUTES)
def test_cors_preflights_are_never_granted(
    portal: Portal, path: str, origin: str, method: str, request_headers: str
) -> None:
    headers = [
        ("Origin", origin.format(host=portal.host, other=portal.port + 1)),
        ("Access-Control-Request-Method", method),
        ("Access-Control-Request-Headers", request_headers),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Cookie", portal.cookie),
    ]
    reply = portal.send(head("OPTIONS", path, portal.host, [h for h in headers if h[1]]), "OPTIONS")
    assert reply.status in (404, 405), reply  # a preflight that does not answer 2xx fails
    assert_clean(reply, portal.secrets)  # includes: no Access-Control-Allow-* header


@pytest.mark.parametrize(
    "path",
    ["/", "/logout", "/api/status", "/api/device", "/auth/done", "/auth/callback", "/static/portal.css"],
)
def test_cross_origin_reads_are_never_granted(portal: Portal, path: str) -> None:
    headers = [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Cookie", portal.cookie),
    ]
    reply = portal.send(head("GET", path, portal.host, headers))
    assert reply.status < 500, reply
    assert_clean(reply, portal.secrets)  # no Access-Control-Allow-Origin: the page cannot read it


# ---- methods x routes ---------------------------------------------------------------------------
ACTIONS = ["/login", "/api-key", "/logout", "/refresh", "/device", "/device/cancel"]
METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "BREW"]
GET_ANSWERS = {"/": 200, "/logout": 200, "/device": 303}  # /device: no pending code sign-in


@pytest.mark.parametrize(
    "path,method", [(path, method) for path in ["/", *ACTIONS] for method in METHODS] + [("/", "POST")]
)
def test_no_method_but_post_changes_anything(portal: Portal, config: Path, path: str, method: str) -> None:
    body = form(portal)
    headers = [
        ("Cookie", portal.cookie),
        ("Origin", f"http://{portal.host}"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Length", str(len(body))),
    ]
    # The session, the CSRF token and the key both in the query string and in the body.
    reply = portal.send(head(method, f"{path}?{body.decode()}", portal.host, headers) + body, method)
    expected = GET_ANSWERS.get(path, 405) if method == "GET" else 405
    assert reply.status == expected, reply
    assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)  # TRACE echoes nothing: the cookie is a secret here


@dataclass(frozen=True)
class Refusal:
    headers: tuple[tuple[str, str], ...] = ()
    csrf: str = "body"  # where the CSRF token goes: body, query, header, wrong (in the body), none
    cookie: bool = True
    host: str | None = None
    status: int = 403


POST_REFUSALS = {
    "no session": Refusal(cookie=False),
    "no CSRF token": Refusal(csrf="none"),
    "wrong CSRF token": Refusal(csrf="wrong"),
    "CSRF token in the query string only": Refusal(csrf="query"),
    "CSRF token in a header only": Refusal(csrf="header"),
    "Sec-Fetch-Site: cross-site": Refusal((("Sec-Fetch-Site", "cross-site"),)),
    "Sec-Fetch-Site: same-site": Refusal((("Sec-Fetch-Site", "same-site"),)),
    "Origin: http://evil.example": Refusal((("Origin", "http://evil.example"),)),
    "Origin: null": Refusal((("Origin", "null"),)),
    "Origin: our name, another port": Refusal((("Origin", "http://localhost:{other}"),)),
    "Origin: our name as a subdomain": Refusal((("Origin", "http://localhost:{port}.evil.example"),)),
    "Origin: ours, but Sec-Fetch-Site: cross-site": Refusal(
        (("Origin", "http://{host}"), ("Sec-Fetch-Site", "cross-site"))
    ),
    "Origin: evil, vouched for by X-Forwarded-Host": Refusal(
        (("Origin", "http://xfh.evil.example"), ("X-Forwarded-Host", "xfh.evil.example"))
    ),
    "foreign Host": Refusal(host="evil.example", status=400),
}


@pytest.mark.parametrize("refusal", POST_REFUSALS.values(), ids=POST_REFUSALS.keys())
@pytest.mark.parametrize("path", ACTIONS)
def test_a_post_without_session_csrf_or_same_origin_changes_nothing(
    portal: Portal, config: Path, path: str, refusal: Refusal
) -> None:
    fields = {"api_key": ATTACKER_KEY}
    if refusal.csrf == "body":
        fields["csrf_token"] = portal.csrf
    elif refusal.csrf == "wrong":
        fields["csrf_token"] = ("A" if portal.csrf[0] != "A" else "B") + portal.csrf[1:]
    target = f"{path}?csrf_token={portal.csrf}" if refusal.csrf == "query" else path
    names = {"host": portal.host, "port": portal.port, "other": portal.port + 1}
    headers = [(name, value.format(**names)) for name, value in refusal.headers]
    if refusal.csrf == "header":
        headers.append(("X-CSRF-Token", portal.csrf))
    body = urlencode(fields).encode()
    data = post(portal, target, body, headers, host=refusal.host, cookie=refusal.cookie)
    reply = portal.send(data, "POST")
    assert reply.status == refusal.status, reply
    assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)


@pytest.mark.parametrize("path", ["/api-key", "/logout"])
def test_a_post_with_session_and_csrf_does_change_the_file(portal: Portal, config: Path, path: str) -> None:
    """The control: the requests above are refused for what they lack, not for how they are sent."""
    headers = [("Origin", f"http://{portal.host}"), ("Sec-Fetch-Site", "same-origin")]
    reply = portal.send(post(portal, path, form(portal), headers), "POST")
    assert reply.status == 303 and reply.get("location") == "/", reply
    assert config.read_bytes() != ORIGINAL
    assert (ATTACKER_KEY in config.read_text()) == (path == "/api-key")
    assert config.read_bytes().startswith(b'# edited by hand\nmodel = "o3"  # keep me\n')
    assert_clean(reply, portal.secrets)


# ---- content types ------------------------------------------------------------------------------
def _bodies(csrf: str) -> dict[str, tuple[str | None, bytes]]:
    urlencoded = urlencode({"csrf_token": csrf, "api_key": ATTACKER_KEY})
    part = f'Content-Disposition: form-data; name="csrf_token"\r\n\r\n{csrf}\r\n'
    return {
        "no Content-Type": (None, urlencoded.encode()),
        "application/json": ("application/json", f'{{"csrf_token": "{csrf}", "api_key": "x"}}'.encode()),
        "text/plain": ("text/plain", f"csrf_token={csrf}\r\napi_key={ATTACKER_KEY}\r\n".encode()),
        "text/plain, urlencoded body": ("text/plain", urlencoded.encode()),
        "multipart without boundary": ("multipart/form-data", urlencoded.encode()),
        "multipart, urlencoded body": ("multipart/form-data; boundary=XyZ", urlencoded.encode()),
        "multipart, other boundary": (
            "multipart/form-data; boundary=XyZ",
            f"--abc\r\n{part}--abc--\r\n".encode(),
        ),
        "multipart, truncated": ("multipart/form-data; boundary=XyZ", f"--XyZ\r\n{part}".encode()[:-2]),
        "urlencoded in UTF-16": (
            "application/x-www-form-urlencoded; charset=utf-16",
            urlencoded.encode("utf-16"),
        ),
        "urlencoded, charset=bogus": ("application/x-www-form-urlencoded; charset=bogus-9", b"\xff\xfe=\x00"),
        "binary body": ("application/x-www-form-urlencoded", b"\x00\xff\xfe%%%\r\n=&=&%ZZ\x80"),
        "JSON body as urlencoded": (
            "application/x-www-form-urlencoded",
            f'{{"csrf_token": "{csrf}"}}'.encode(),
        ),
        "empty body": ("application/x-www-form-urlencoded", b""),
        "XML": ("application/xml", f"<f><csrf_token>{csrf}</csrf_token></f>".encode()),
    }


BODY_KINDS = list(_bodies("x"))


@pytest.mark.parametrize("kind", BODY_KINDS)
@pytest.mark.parametrize("path", ACTIONS)
def test_odd_content_types_get_a_clear_4xx_and_change_nothing(
    portal: Portal, config: Path, path: str, kind: str
) -> None:
    content_type, body = _bodies(portal.csrf)[kind]
    reply = portal.send(post(portal, path, body, content_type=content_type), "POST")
    assert 400 <= reply.status < 500, reply
    assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)


def test_a_well_formed_multipart_form_is_a_form(portal: Portal, config: Path) -> None:
    """The control: multipart is how a form with enctype=multipart/form-data posts; with the CSRF
    token it is accepted like the urlencoded form, so the refusals above are about the bodies."""
    parts = [("csrf_token", portal.csrf), ("api_key", ATTACKER_KEY)]
    body = "".join(f'--XyZ\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n' for n, v in parts)
    data = post(
        portal, "/api-key", f"{body}--XyZ--\r\n".encode(), content_type="multipart/form-data; boundary=XyZ"
    )
    reply = portal.send(data, "POST")
    assert reply.status == 303, reply
    assert ATTACKER_KEY in config.read_text()
    assert_clean(reply, portal.secrets)


# ---- bodies over the cap ------------------------------------------------------------------------
@pytest.mark.parametrize("length", [CAP + 1, 1 << 30, 10**18])
@pytest.mark.parametrize(
    "path", ["/api-key", "/login", "/logout", "/", "/api/status", "/static/portal.css", "/nowhere"]
)
def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(
    portal: Portal, config: Path, path: str, length: int
) -> None:
    with connect(portal.port) as sock:
        started = time.monotonic()
        sock.sendall(post(portal, path, form(portal), length=length))  # a first bit of the body
        assert wait_readable(sock, WAIT), "no answer while the announced body is still unsent"
        reply = read_reply(sock, "POST")
        assert time.monotonic() - started < WAIT
    # A route that takes no body may refuse it as such (404, 405) without reading it, too.
    assert reply.status in ((413,) if path in ACTIONS else (404, 405, 413)), reply
    assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)


@pytest.mark.parametrize("path", ["/api-key", "/logout"])
def test_the_413_for_a_declared_length_carries_the_security_headers(portal: Portal, path: str) -> None:
    reply = portal.send(post(portal, path, form(portal), length=CAP + 1), "POST")
    assert reply.status == 413, reply
    assert_clean(reply, portal.secrets)


def test_a_client_waiting_for_100_continue_gets_the_413_instead(portal: Portal) -> None:
    data = head(
        "POST",
        "/api-key",
        portal.host,
        [
            ("Cookie", portal.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(1 << 30)),
            ("Expect", "100-continue"),
        ],
    )
    with connect(portal.port) as sock:
        sock.sendall(data)
        assert wait_readable(sock, WAIT)
        first = sock.recv(64)
    assert first.startswith(b"HTTP/1.1 413 "), first  # no "100 Continue": the body is never asked for


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n" if data else b"0\r\n\r\n"


def chunked_head(portal: Portal, path: str) -> bytes:
    """The head of a form POST with the session whose body follows in chunks (no Content-Length)."""
    return head(
        "POST",
        path,
        portal.host,
        [
            ("Cookie", portal.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Transfer-Encoding", "chunked"),
        ],
    )


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("size", [CAP, CAP + 1])
def test_the_cap_is_16_kib_exactly(portal: Portal, config: Path, size: int, framing: str) -> None:
    body = form(portal, api_key="sk-at-the-cap-0123456789", pad="")
    body += b"p" * (size - len(body))
    assert len(body) == size
    if framing == "chunked":
        framed = chunked_head(portal, "/api-key")
        framed += b"".join(_chunked(body[i : i + 4096]) for i in range(0, size, 4096)) + _chunked(b"")
    else:
        framed = post(portal, "/api-key", body)
    reply = portal.send(framed, "POST")
    if size == CAP:
        assert reply.status == 303, reply
        assert "sk-at-the-cap-0123456789" in config.read_text()
    else:
        assert reply.status == 413, reply
        assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)


@pytest.mark.parametrize("path", ["/api-key", "/logout", "/nowhere"])
def test_a_chunked_body_growing_without_end_is_refused_and_not_buffered(
    portal: Portal, config: Path, path: str
) -> None:
    """50 MiB in chunks, no Content-Length: the 413 comes once the cap is passed, and whatever the
    client keeps sending is dropped, not kept: the process's memory stays flat."""
    total = 50 << 20
    chunk = _chunked(b"a" * 65536)
    start_head = chunked_head(portal, path)
    before = rss_mib()
    started = time.monotonic()
    with connect(portal.port) as sock:
        sock.sendall(start_head + _chunked(form(portal)) + _chunked(b"a" * (2 * CAP)))
        assert wait_readable(sock, WAIT), "no answer once the body passed the cap"
        reply = read_reply(sock, "POST")
        sent = 2 * CAP
        try:
            while sent < total and time.monotonic() - started < 10 * WAIT:
                sock.sendall(chunk)
                sent += 65536
        except (ConnectionError, TimeoutError):
            pass  # the server closed, or stopped reading: fine too, nothing more is buffered
        growth = rss_mib() - before
    assert reply.status in ((413,) if path != "/nowhere" else (404, 413)), reply
    assert growth < 24, f"memory grew by {growth:.0f} MiB while {sent >> 20} MiB were sent"
    assert time.monotonic() - started < 10 * WAIT
    assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)


def test_a_huge_declared_chunk_is_refused_at_the_cap(portal: Portal, config: Path) -> None:
    data = chunked_head(portal, "/api-key")
    with connect(portal.port) as sock:
        sock.sendall(data + b"fffffffffff\r\n" + form(portal) + b"&pad=" + b"p" * (2 * CAP))
        assert wait_readable(sock, WAIT)
        reply = read_reply(sock, "POST")
    assert reply.status == 413, reply
    assert config.read_bytes() == ORIGINAL
    assert_clean(reply, portal.secrets)


def test_the_connection_is_closed_after_a_413(portal: Portal) -> None:
    with connect(portal.port) as sock:
        sock.sendall(post(portal, "/api-key", form(portal), length=1 << 30))
        assert wait_readable(sock, WAIT)
        assert read_reply(sock, "POST").status == 413
        assert closed_within(sock, WAIT), "the server waits for the rest of a 1 GiB body it refused"


# ---- request heads over the cap -----------------------------------------------------------------
OVERSIZED_HEADS = {
    "1 MiB header line": ("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: ", b"a" * 4096),
    "1 MiB cookie": ("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: c=", b"b" * 4096),
    "1 MiB request target": ("GET /?x=", b"x" * 4096),
    "131072 small headers (1 MiB)": ("GET / HTTP/1.1\r\nHost: {host}\r\n", b"X-A: b\r\n" * 512),
}


@pytest.mark.parametrize("case", OVERSIZED_HEADS)
def test_an_oversized_request_head_is_refused_early(portal: Portal, case: str) -> None:
    template, piece = OVERSIZED_HEADS[case]
    total = 1 << 20
    with connect(portal.port) as sock:
        started = time.monotonic()
        first = portal.fill(template) + piece * (2 * CAP // len(piece))  # one write, past 16 KiB
        sock.sendall(first)
        sent = len(first)
        while not wait_readable(sock, 0.05) and sent < total:
            sock.sendall(piece)
            sent += len(piece)
        assert wait_readable(sock, WAIT), "no answer to an endless request head"
        reply = read_reply(sock)
        assert time.monotonic() - started < WAIT
        assert sent < total, f"the server read all {sent} bytes of the head before refusing it"
        assert closed_within(sock, WAIT)
    assert reply.status == 400, reply
    assert reply.get("connection") == "close"
    assert_no_leak(reply, portal.secrets)


def test_many_small_headers_within_the_cap_are_fine(portal: Portal) -> None:
    headers = [("Cookie", portal.cookie)] + [(f"X-{i}", "v") for i in range(1500)]
    data = head("GET", "/", portal.host, headers)
    assert len(data) < CAP
    started = time.monotonic()
    reply = portal.send(data)
    assert time.monotonic() - started < WAIT
    assert reply.status == 200, reply
    assert_clean(reply, portal.secrets)


# ---- malformed requests: uvicorn's own 400 ------------------------------------------------------
MALFORMED = {
    "two Host headers": "GET / HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n\r\n",
    "no Host on HTTP/1.1": "GET / HTTP/1.1\r\n\r\n",
    "negative Content-Length": "POST /api-key HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n",
    "two Content-Lengths": "POST /api-key HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n"
    "Content-Length: 2\r\n\r\nab",
    "unknown Transfer-Encoding": "POST /api-key HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\n",
    "space in a header name": "GET / HTTP/1.1\r\nHost: {host}\r\nBad Name: x\r\n\r\n",
    "NUL in the target": "GET /\x00 HTTP/1.1\r\nHost: {host}\r\n\r\n",
}


@pytest.mark.parametrize("template", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_a_plain_400(portal: Portal, config: Path, template: str) -> None:
    reply = portal.send(portal.fill(template))
    assert reply.status == 400 and reply.get("connection") == "close", reply
    assert config.read_bytes() == ORIGINAL
    assert_no_leak(reply, portal.secrets)


@pytest.mark.parametrize("template", MALFORMED.values(), ids=MALFORMED.keys())
def test_uvicorns_own_400_carries_the_security_headers(portal: Portal, template: str) -> None:
    assert_clean(portal.send(portal.fill(template)), portal.secrets)


# ---- slow clients -------------------------------------------------------------------------------
SLOW_CLIENTS = 50


def test_the_portal_answers_while_slow_clients_hold_connections(portal: Portal) -> None:
    """50 clients dribble their request heads one byte per second and 10 more send nothing; a normal
    request on another connection is still answered at once, every second."""
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(connect(portal.port)) for _ in range(SLOW_CLIENTS)]
        idle = [stack.enter_context(connect(portal.port)) for _ in range(10)]
        for sock in slow:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {portal.host}\r\nX-Slow: ".encode())
        latencies = []
        for _ in range(3):
            for sock in slow:
                sock.sendall(b"a")
            asked = time.monotonic()
            reply = portal.send(head("GET", "/", portal.host, [("Cookie", portal.cookie)]))
            latencies.append(time.monotonic() - asked)
            assert reply.status == 200, reply
            assert_clean(reply, portal.secrets)
            # Pace the slow clients: a second per byte (a server closing them would wake this early).
            select.select(slow + idle, [], [], max(0.0, 1.0 - latencies[-1]))
    assert max(latencies) < WAIT, latencies


HEAD_DEADLINE = 5.0  # seconds a client may take to send its request head (uvicorn's keep-alive time)


def test_a_client_that_never_finishes_its_request_head_is_disconnected(portal: Portal) -> None:
    with connect(portal.port) as dribbler, connect(portal.port) as idle:
        dribbler.sendall(f"GET / HTTP/1.1\r\nHost: {portal.host}\r\nX-Slow: ".encode())
        still_open = {dribbler, idle}
        deadline = time.monotonic() + HEAD_DEADLINE + WAIT
        while still_open and time.monotonic() < deadline:
            readable, _, _ = select.select(list(still_open), [], [], 1.0)  # a byte per second
            for sock in readable:
                if closed_within(sock, 0.1):
                    still_open.discard(sock)
            if dribbler in still_open:
                try:
                    dribbler.sendall(b"a")
                except ConnectionError:
                    still_open.discard(dribbler)
        assert not still_open, f"{len(still_open)} client(s) still connected after {HEAD_DEADLINE + WAIT} s"
