"""The portal's defences against a hostile web page in the same browser and other local users.

- `SecurityMiddleware` (pure ASGI, so it costs little): refuses a Host that is not ours (DNS
  rebinding), refuses cross-origin unsafe requests (Sec-Fetch-Site, then Origin), adds the security
  headers to every response, and logs requests without their query strings (which carry codes).
- `Sessions`: the one-time launch token printed in the terminal opens a session (a cookie); every
  page needs it. Each session has its CSRF token. Secrets are compared in constant time and kept
  only as hashes, so lookups do not leak them through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BODY = 16 * 1024
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 64
access_log = logging.getLogger("codex_portal.access")


def allowed_hosts(port: int) -> frozenset[str]:
    names = ("localhost", "127.0.0.1", "[::1]")
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts.update(names)
    return frozenset(hosts)


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        port: int,
        max_body: int = MAX_BODY,
        form_action: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.hosts = allowed_hosts(port)
        self.origins = frozenset(f"http://{host}" for host in self.hosts)
        self.form_action = form_action
        self._cached: tuple[tuple[str, ...], list[tuple[bytes, bytes]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status_holder = [0]
        send = self._with_headers(send, status_holder)
        if headers.get("host", "").lower() not in self.hosts:
            await _plain(send, 400, "Invalid Host header: codex-portal answers only on localhost.")
        elif _declared_length(headers) > self.max_body:
            await _plain(send, 413, "Request body too large.")
        elif scope["method"] not in SAFE_METHODS and not self._same_origin(headers):
            await _plain(send, 403, "Cross-origin request refused.")
        else:
            await self.app(scope, receive, send)
        if not scope["path"].startswith("/static/") or status_holder[0] >= 400:
            access_log.info('"%s %s" %d', scope["method"], scope["path"], status_holder[0])  # pages, actions

    def _headers(self) -> list[tuple[bytes, bytes]]:
        """security_headers(), rebuilt only when the form-action origins change."""
        origins = tuple(self.form_action())
        if self._cached is None or self._cached[0] != origins:
            self._cached = (origins, security_headers(origins))
        return self._cached[1]

    def _same_origin(self, headers: dict[str, str]) -> bool:
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        return origin is None or origin.lower() in self.origins

    def _with_headers(self, send: Send, status_holder: list[int]) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self._headers() if k not in names]
                if message["status"] == 413 and b"connection" not in names:
                    extra.append((b"connection", b"close"))  # never drain a body we refused
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        return send_with_headers


def content_security_policy(
    form_action_origins: Iterable[str] = (), *, style_src: str = "'self'", img_src: str = "'self'"
) -> str:
    """Only this origin's scripts, styles and images; forms go here or to the provider."""
    form_action = " ".join(["'self'", *form_action_origins])
    return (
        f"default-src 'none'; script-src 'self'; style-src {style_src}; img-src {img_src}; "
        f"connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def security_headers(form_action_origins: Iterable[str] = ()) -> list[tuple[bytes, bytes]]:
    """The headers every response carries, including the ones uvicorn writes itself (a response
    that sets its own Content-Security-Policy keeps it)."""
    return [
        (b"content-security-policy", content_security_policy(form_action_origins).encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]


def _declared_length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return 0  # h11 refuses a malformed Content-Length before we ever see it


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def same_secret(given: str | None, expected: str | None) -> bool:
    """`given` is `expected`, compared in constant time (as digests: the lengths leak nothing)."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))


@dataclass
class Session:
    csrf_token: str = field(repr=False)
    created: float
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)
    form_error: tuple[str, str] | None = None  # (field id, message), shown once after a redirect

    def flash(self, text: str, kind: str = "info") -> None:
        self.flashes.append((kind, text))

    def take_form_error(self) -> tuple[str, str] | None:
        error, self.form_error = self.form_error, None
        return error

    def take_flashes(self) -> list[tuple[str, str]]:
        flashes, self.flashes = self.flashes, []
        return flashes

    def csrf_ok(self, token: str | None) -> bool:
        return same_secret(token, self.csrf_token)


class Sessions:
    """Browser sessions opened by the one-time launch token."""

    def __init__(self, launch_token: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._launch_digest: bytes | None = _digest(launch_token)
        self._sessions: dict[bytes, Session] = {}
        self._clock = clock

    @staticmethod
    def new_launch_token() -> str:
        return secrets.token_urlsafe(32)  # 256 bits

    def mint_launch_token(self) -> str:
        """A new one-time launch token (`codex-portal open`). It replaces an unused one; a used
        one was spent for good and stays so."""
        token = self.new_launch_token()
        self._launch_digest = _digest(token)
        return token

    def redeem(self, launch_token: str) -> str | None:
        """A new session id when `launch_token` is the unused launch token; it can never be used again."""
        if self._launch_digest is None or not hmac.compare_digest(_digest(launch_token), self._launch_digest):
            return None
        self._launch_digest = None
        return self.open()

    def open(self) -> str:
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session_id = secrets.token_urlsafe(32)
        self._sessions[_digest(session_id)] = Session(
            csrf_token=secrets.token_urlsafe(32), created=self._clock()
        )
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        self._expire()
        return self._sessions.get(_digest(session_id))

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if now - s.created >= SESSION_TTL]:
            del self._sessions[key]
