"""A loopback issuer that speaks the Codex CLI's device sign-in, and nothing more, strictly.

The default issuer (https://auth.openai.com) has no RFC 8628 endpoint; the Codex CLI signs in with
a code through its own calls (codex-rs/login/src/device_code_auth.rs). They cannot be tried against
the real issuer here, so this server answers exactly those calls, and refuses whatever the real one
would not take (a wrong content type, a missing or unknown field, a wrong client), so that a client
that drifts from the protocol fails its tests:

    POST /api/accounts/deviceauth/usercode   JSON {"client_id"}
         -> 200 {"device_auth_id", "user_code" (or "usercode"), "interval"}
    GET  /codex/device                       the page where the person enters the code
    POST /api/accounts/deviceauth/token      JSON {"device_auth_id", "user_code"}
         -> 403 while the person has not finished; then 200
            {"authorization_code", "code_verifier", "code_challenge"}
    POST /oauth/token                        form: grant_type=authorization_code, code,
         redirect_uri={issuer}/deviceauth/callback, client_id, code_verifier
         -> the tokens; the code is one-time, and S256(code_verifier) must be the challenge issued
    GET  /.well-known/openid-configuration   no device_authorization_endpoint (as the real one)
    GET  /jwks                               the key that signs the ID tokens (RS256)

The person's step is `approve(user_code)`. Faults, to see the client's side of a failing issuer:
`status[path] = 503` answers that status on that path; `delay[path] = seconds` answers late;
`poll_statuses` are answered, in turn, to the polls before the normal answer; `usercode_body`
replaces the answer to the usercode call; `code_challenge` replaces the challenge sent with the
code. `requests` records every request (path, content type, body).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

USERCODE = "/api/accounts/deviceauth/usercode"
POLL = "/api/accounts/deviceauth/token"
TOKEN = "/oauth/token"
DEVICE_PAGE = "/codex/device"
CLIENT_ID = "app_codex_device_test"
EMAIL = "dev@codex-device.test"
MAX_BODY = 16 * 1024


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    content_type: str
    body: bytes


@dataclass
class _Device:
    device_auth_id: str
    user_code: str
    approved: bool = False
    verifier: str = ""
    code: str = ""


@dataclass
class _Code:
    challenge: str
    used: bool = False


@cache
def _key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "codex-device-1", "use": "sig"}, private=True)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class CodexIssuer:
    """The server, in a thread; `with CodexIssuer() as issuer: issuer.issuer, issuer.approve(code)`."""

    client_id: str = CLIENT_ID
    interval: object = "1"  # as the real one sends it: a numeric string
    code_key: str = "user_code"  # the Codex CLI also takes "usercode"
    user_code: str = "CDX4-7Q2P"
    status: dict[str, int] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    poll_statuses: list[int] = field(default_factory=list)
    usercode_body: dict[str, Any] | None = None
    code_challenge: str | None = None
    requests: list[Seen] = field(default_factory=list)
    issuer: str = ""
    _devices: dict[str, _Device] = field(default_factory=dict)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ---- the person ----------------------------------------------------------------------------
    def approve(self, user_code: str) -> None:
        """The person enters the code at /codex/device and signs in."""
        with self._lock:
            found = [d for d in self._devices.values() if d.user_code == user_code]
            assert found, f"no device sign-in has the code {user_code!r}"
            found[0].approved = True

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if s.path == path]

    # ---- the server ----------------------------------------------------------------------------
    def __enter__(self) -> CodexIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                issuer._handle(self, "GET")

            def do_POST(self) -> None:
                issuer._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(min(length, MAX_BODY)) if length else b""
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        with self._lock:
            self.requests.append(Seen(method, path, content_type, body))
        if path in self.delay:
            time.sleep(self.delay[path])
        if path in self.status:
            self._send(handler, self.status[path], {"error": "server_error"})
            return
        routes: dict[tuple[str, str], Callable[[str, bytes], tuple[int, dict[str, Any] | str]]] = {
            ("GET", "/.well-known/openid-configuration"): self._discovery,
            ("GET", "/jwks"): self._jwks,
            ("GET", DEVICE_PAGE): self._device_page,
            ("POST", USERCODE): self._usercode,
            ("POST", POLL): self._poll,
            ("POST", TOKEN): self._token,
        }
        route = routes.get((method, path))
        if route is None:
            self._send(handler, 404, {"error": "not_found"})
            return
        status, answer = route(content_type, body)
        self._send(handler, status, answer)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, answer: dict[str, Any] | str) -> None:
        is_page = isinstance(answer, str)
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/html" if is_page else "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Cache-Control", "no-store")
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (a deadline): nothing to answer

    # ---- the endpoints ---------------------------------------------------------------------------
    def _discovery(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        return 200, {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/oauth/authorize",
            "token_endpoint": f"{self.issuer}{TOKEN}",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def _jwks(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        return 200, dict(KeySet([_key()]).as_dict(private=False))

    def _device_page(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        return 200, "<!doctype html><title>Enter code</title><form><input name=code></form>"

    @staticmethod
    def _json_object(content_type: str, body: bytes, fields: tuple[str, ...]) -> dict[str, str] | str:
        """The request's JSON object with exactly `fields`, all non-empty strings; else why not."""
        if content_type != "application/json":
            return "unsupported_media_type"
        try:
            doc = json.loads(body)
        except ValueError:
            return "invalid_json"
        if not isinstance(doc, dict) or set(doc) != set(fields):
            return "invalid_request"
        if not all(isinstance(doc[name], str) and doc[name] for name in fields):
            return "invalid_request"
        return doc

    def _usercode(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        doc = self._json_object(content_type, body, ("client_id",))
        if isinstance(doc, str):
            return (415 if doc == "unsupported_media_type" else 400), {"error": doc}
        if doc["client_id"] != self.client_id:
            return 401, {"error": "invalid_client"}
        device = _Device(device_auth_id=f"deviceauth_{secrets.token_urlsafe(16)}", user_code=self.user_code)
        with self._lock:
            self._devices[device.device_auth_id] = device
        if self.usercode_body is not None:
            return 200, self.usercode_body
        return 200, {
            "device_auth_id": device.device_auth_id,
            self.code_key: device.user_code,
            "interval": self.interval,
        }

    def _poll(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        doc = self._json_object(content_type, body, ("device_auth_id", "user_code"))
        if isinstance(doc, str):
            return (415 if doc == "unsupported_media_type" else 400), {"error": doc}
        with self._lock:
            if self.poll_statuses:
                return self.poll_statuses.pop(0), {"error": "scripted"}
            device = self._devices.get(doc["device_auth_id"])
            if device is None or device.user_code != doc["user_code"]:
                return 404, {"error": "unknown device sign-in"}
            if not device.approved:
                return 403, {"error": "deviceauth_authorization_pending"}
            if not device.code:  # the server's own PKCE pair, as the real one keeps it
                device.verifier = secrets.token_urlsafe(48)
                device.code = f"ac_{secrets.token_urlsafe(24)}"
                self._codes[device.code] = _Code(challenge=s256(device.verifier))
            return 200, {
                "authorization_code": device.code,
                "code_verifier": device.verifier,
                "code_challenge": self.code_challenge or s256(device.verifier),
            }

    def _token(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any] | str]:
        if content_type != "application/x-www-form-urlencoded":
            return 400, {"error": "invalid_request", "error_description": "form-encoded body required"}
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        expected = {"grant_type", "code", "redirect_uri", "client_id", "code_verifier"}
        if set(form) != expected:
            return 400, {"error": "invalid_request"}
        if form["grant_type"] != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        if form["client_id"] != self.client_id:
            return 401, {"error": "invalid_client"}
        with self._lock:
            code = self._codes.get(form["code"])
            if (
                code is None
                or code.used
                or form["redirect_uri"] != f"{self.issuer}/deviceauth/callback"
                or s256(form["code_verifier"]) != code.challenge
            ):
                return 400, {"error": "invalid_grant"}
            code.used = True
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": "user-codex-device",
            "email": EMAIL,
            "iat": now,
            "exp": now + 3600,
        }
        id_token = jwt.encode({"alg": "RS256", "kid": "codex-device-1"}, claims, _key())
        return 200, {
            "access_token": f"at_{secrets.token_urlsafe(24)}",
            "refresh_token": f"rt_{secrets.token_urlsafe(24)}",
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 3600,
        }
