"""A fault-injecting stand-in OpenID provider: a real HTTP server on loopback for hardening tests.

The real provider (tests/idp.py, npm oidc-provider) behaves well; this one can be told, endpoint by
endpoint, to misbehave, so that the portal's real HTTP client meets every kind of broken answer over
a real socket. With no fault set it is a small but working provider: discovery, authorization code
with PKCE S256 (codes are one-time and bound to the redirect URI), refresh tokens (rotated), the
device grant (RFC 8628), RFC 7009 revocation, JWKS, userinfo, and RS256 ID tokens signed with joserfc.

    with FaultyProvider() as fake:
        fake.fail("token", "hang")            # every later token request hangs
        fake.id_token_fault = "wrong_aud"     # ID tokens it issues have another audience
        callback = fake.authorize(authorize_url)   # ".../auth/callback?code=...&state=..."
        fake.requests("token"), fake.wait_for("token"), fake.issued (every secret it handed out)

Endpoints (under ``issuer``, which carries a random path prefix so that the portal's per-issuer
caches never mix two tests): ``/.well-known/openid-configuration`` and
``/.well-known/oauth-authorization-server`` ("discovery"), ``/authorize``, ``/token``, ``/revoke``,
``/jwks``, ``/device/code`` ("device"), ``/userinfo``, and ``/stolen``, the target of every redirect
it sends: a client that follows a redirect shows up there.

Faults every endpoint knows: ``500_html`` (a 500 error page with markup), ``garbage_200`` (200 with
text that is not JSON), ``json_array``, ``redirect_302`` (to ``/stolen``), ``hang`` (no answer until
``hang_seconds`` pass or the server stops), ``trickle`` (the normal answer, preceded by one byte of
JSON whitespace every 0.1 s for ``trickle_seconds``: every read is quick, the whole is slow). The
endpoint's own faults are listed in DISCOVERY_FAULTS, TOKEN_FAULTS, JWKS_FAULTS, DEVICE_FAULTS;
ID_TOKEN_FAULTS are set with ``id_token_fault`` (``refresh_id_token_fault`` for ID tokens sent with
a refresh, which the fake includes only when ``id_token_on_refresh``). ``errors`` collects the
fake's own failures (a client hanging up is not one); ``stop()`` raises unless every handler ended.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MARKER = "FAULTY-PROVIDER-PAGE"  # in every error page the fake sends: must never reach a portal page
ERROR_PAGE = (
    "<!doctype html><html><head><title>500 Internal Server Error</title></head><body>"
    f"<h1>{MARKER}: Internal Server Error</h1><script>alert('{MARKER}')</script>"
    '<pre>Traceback (most recent call last):\n  File "/srv/idp/app.py", line 1</pre></body></html>'
)
MARKUP = "<script>alert('FAULTY')</script>\"><img src=x onerror=alert(1)>"
CONTROL_CHARS = (  # a terminal escape (clear screen, set title) and a fake traceback
    "server_error\x1b[2J\x1b]0;pwned\x07\n"
    'Traceback (most recent call last):\n  File "/srv/idp/app.py", line 1\n'
)
EMAIL = "alice@faulty.test"
SPOOFED_EMAIL = "mallory@evil.example"
MAX_BODY = 64 * 1024
TRICKLE_STEP = 0.1  # seconds between two bytes of a trickled answer

GENERIC_FAULTS = ("500_html", "garbage_200", "json_array", "redirect_302", "hang", "trickle")
DISCOVERY_FAULTS = (
    *GENERIC_FAULTS,
    "invalid_json",  # 200, text that starts like JSON and is not
    "truncated_json",  # 200, the document cut in the middle
    "missing_endpoints",  # 200, an object naming only the issuer
    "other_issuer",  # 200, a document that names another issuer
    "foreign_http_endpoints",  # 200, the endpoints on a plain-http host that is not loopback
    "too_large",  # 200, a valid document padded beyond 1 MiB
)
TOKEN_FAULTS = (
    *GENERIC_FAULTS,
    "truncated_json",  # 200, a token answer cut in the middle
    "no_access_token",  # 200, a JSON object without access_token
    "token_type_mac",  # 200, a token of another type than Bearer
    "redirect_302_with_token",  # 302 to /stolen whose body is a valid token answer
    "invalid_grant",  # 400 {"error": "invalid_grant"}
    "slow_down",  # 400 {"error": "slow_down"} (device grant)
    "access_denied",  # 400 {"error": "access_denied"} (device grant)
    "error_markup",  # 400 with markup in error and error_description
    "error_control_chars",  # 400 with line breaks (a fake traceback) and a terminal escape in both
    "expires_in_infinity",  # 200, the normal answer with "expires_in": Infinity (Python's json takes it)
    "expires_in_1e400",  # 200, "expires_in": 1e400 (a float that overflows to infinity)
    "expires_in_huge",  # 200, "expires_in": 10**19 (an integer TOML cannot hold)
    "deep_nesting",  # 200, 100,000 "[" (a RecursionError in a JSON parser)
    "huge_answer",  # 200, a valid JSON object of 8 MiB (read whole, it would take the memory)
)
# Faults that spoil a value of the normal answer: the JSON text appended to it, replacing the key.
VALUE_FAULTS = {
    "expires_in_infinity": b'"expires_in": Infinity',
    "expires_in_1e400": b'"expires_in": 1e400',
    "expires_in_huge": b'"expires_in": 10000000000000000000',
    "interval_negative": b'"interval": -1',
    "interval_tiny": b'"interval": 0.001',
    "lifetime_huge": b'"expires_in": 1000000000',
    "escape_user_code": b'"user_code": "\\u001b]0;pwned\\u0007\\u001b[2JWXYZ-0000"',
    "escape_uri": b'"verification_uri": "http://127.0.0.1/device\\u001b[2J"',
}
REVOKE_FAULTS = GENERIC_FAULTS
JWKS_FAULTS = (
    *GENERIC_FAULTS,
    "unknown_kid",  # publishes only a key that signs nothing
    "no_keys",  # {"keys": "none"}
)
DEVICE_FAULTS = (
    *GENERIC_FAULTS,
    "missing_user_code",
    "javascript_uri",  # verification_uri = javascript:...
    "error_markup",
    "error_control_chars",
    "interval_negative",  # 200, "interval": -1
    "interval_tiny",  # 200, "interval": 0.001
    "lifetime_huge",  # 200, "expires_in": 10**9
    "escape_user_code",  # 200, a user code holding an OSC title sequence and a clear-screen escape
    "escape_uri",  # 200, a verification URI holding a terminal escape
)
ID_TOKEN_FAULTS = (
    "bad_signature",  # signed with a key the fake does not publish, under the published key's kid
    "unpublished_key",  # signed with a key the fake does not publish, under that key's own kid
    "wrong_aud",
    "wrong_iss",
    "wrong_nonce",
    "missing_nonce",
    "expired",  # exp an hour ago
    "missing_exp",
    "alg_none",  # unsigned, {"alg": "none"}
    "hs256_public_key",  # HS256 keyed with the published RSA public key (algorithm confusion)
    "malformed",
    "spoofed_email",  # bad signature, and another person's email
    "missing_sub",  # no sub claim
    "list_aud_no_azp",  # aud a list of two, no azp
    "escape_email",  # an email holding a terminal escape
    "no_email",  # no email claim: the portal asks userinfo
)
USERINFO_FAULTS = (*GENERIC_FAULTS, "other_sub")  # other_sub: userinfo about another account


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    endpoint: str
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    at: float  # time.monotonic()


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None


@dataclass
class _Device:
    user_code: str
    approved: bool = False
    denied: bool = False


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@cache
def _keys() -> tuple[RSAKey, RSAKey, RSAKey]:
    """(published signing key, an unpublished key, a published key that signs nothing): made once."""
    made = [
        RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)
        for kid in ("faulty-key-1", "faulty-key-2", "faulty-key-3")
    ]
    return made[0], made[1], made[2]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@cache
def _huge_answer() -> bytes:
    return b'{"padding": "' + b"x" * (8 * 1024 * 1024) + b'"}'


def _json(value: object, status: int = 200) -> _Answer:
    return _Answer(status, json.dumps(value).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FaultyProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the portal's timeout) makes our late write fail: expected, not loud.
        import sys

        self.fake._note_error(sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at teardown

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        fake = self.server.fake
        fake._enter()
        try:
            super().handle()
        except Exception as exc:
            fake._note_error(exc)
        finally:
            fake._leave()

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    def do_POST(self) -> None:
        self.server.fake._serve(self)


class FaultyProvider:
    """The stand-in provider on 127.0.0.1: start with `with FaultyProvider() as fake:`."""

    __test__ = False

    def __init__(
        self,
        *,
        client_id: str = "faulty-client",
        hang_seconds: float = 10.0,
        trickle_seconds: float = 2.5,
    ) -> None:
        self.client_id = client_id
        self.hang_seconds = hang_seconds
        self.trickle_seconds = trickle_seconds
        self.issuer = ""
        self.faults: dict[str, str] = {}
        self.id_token_fault: str | None = None
        self.refresh_id_token_fault: str | None = None
        self.id_token_on_refresh = False
        self.device_interval = 5.0
        self.device_expires_in = 600
        self.issued: list[str] = []  # every secret handed out: codes, tokens, device codes
        self.errors: list[str] = []  # unexpected failures of the fake itself (not client disconnects)
        self._prefix = "/" + secrets.token_hex(4)
        self._changed = threading.Condition()
        self._seen: list[Seen] = []
        self._codes: dict[str, _Code] = {}
        self._refresh_tokens: set[str] = set()
        self._devices: dict[str, _Device] = {}
        self._granted: list[str] = []
        self._active = 0
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FaultyProvider:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self.issuer = f"http://127.0.0.1:{server.server_address[1]}{self._prefix}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="faulty-idp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release every hanging answer, stop listening, and wait for every handler to end."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        with self._changed:
            ended = self._changed.wait_for(lambda: self._active == 0, timeout=5)
        if not ended or (self._thread is not None and self._thread.is_alive()):
            raise RuntimeError(f"the faulty provider did not stop cleanly ({self._active} handlers left)")

    @property
    def active_handlers(self) -> int:
        with self._changed:
            return self._active

    def __enter__(self) -> FaultyProvider:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what tests tell it and ask it -----------------------------------------------------------
    def fail(self, endpoint: str, mode: str | None) -> None:
        """From now on, answer `endpoint` with the fault `mode` (None: behave)."""
        known = {
            "discovery": DISCOVERY_FAULTS,
            "token": TOKEN_FAULTS,
            "revoke": REVOKE_FAULTS,
            "jwks": JWKS_FAULTS,
            "device": DEVICE_FAULTS,
            "userinfo": USERINFO_FAULTS,
            "authorize": GENERIC_FAULTS,
        }
        if mode is not None and mode not in known[endpoint]:
            raise ValueError(f"unknown fault {mode!r} for {endpoint}")
        with self._changed:
            if mode is None:
                self.faults.pop(endpoint, None)
            else:
                self.faults[endpoint] = mode

    def url(self, path: str) -> str:
        return self.issuer + path

    def requests(self, endpoint: str | None = None) -> list[Seen]:
        with self._changed:
            return [seen for seen in self._seen if endpoint is None or seen.endpoint == endpoint]

    def wait_for(self, endpoint: str, count: int = 1, timeout: float = 10.0) -> bool:
        """True once `count` requests to `endpoint` have arrived (their answers may still be pending)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(1 for seen in self._seen if seen.endpoint == endpoint) >= count, timeout=timeout
            )

    def grants(self, grant_type: str | None = None) -> int:
        """How many token requests were answered with tokens."""
        with self._changed:
            return sum(1 for g in self._granted if grant_type is None or g == grant_type)

    def authorize(self, authorize_url: str, *, approve: bool = True) -> str:
        """What the authorization endpoint does after the person agrees: the redirect back to the
        client, ``<redirect_uri>?code=...&state=...`` (not requested)."""
        query = dict(parse_qsl(urlsplit(authorize_url).query))
        if not authorize_url.startswith(self.url("/authorize?")):
            raise ValueError(f"not this provider's authorization URL: {authorize_url}")
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            raise ValueError("wrong client_id or response_type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            raise ValueError("no PKCE S256 challenge")
        redirect_uri = query["redirect_uri"]
        if not approve:
            return f"{redirect_uri}?{urlencode({'error': 'access_denied', 'state': query.get('state', '')})}"
        code = "code-" + secrets.token_urlsafe(24)
        with self._changed:
            self._codes[code] = _Code(
                self.client_id, redirect_uri, query["code_challenge"], query.get("nonce")
            )
            self.issued.append(code)
        return f"{redirect_uri}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def issue_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        with self._changed:
            self._refresh_tokens.add(token)
            self.issued.append(token)
        return token

    def refresh_token_valid(self, token: str) -> bool:
        with self._changed:
            return token in self._refresh_tokens

    def approve_device(self, user_code: str) -> None:
        with self._changed:
            for device in self._devices.values():
                if device.user_code == user_code:
                    device.approved = True
                    return
        raise ValueError("no such user code")

    def user_codes(self) -> list[str]:
        """The user codes of the device authorizations handed out and not yet used, oldest first."""
        with self._changed:
            return [device.user_code for device in self._devices.values()]

    def id_token(self, *, nonce: str | None, fault: str | None = None, email: str = EMAIL) -> str:
        """An ID token for alice (or one spoiled by `fault`, one of ID_TOKEN_FAULTS)."""
        if fault is not None and fault not in ID_TOKEN_FAULTS:
            raise ValueError(f"unknown ID token fault {fault!r}")
        published, unpublished, _ = _keys()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": self.client_id,
            "iat": now,
            "exp": now + 3600,
            "email": email,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        key, header = published, {"alg": "RS256", "kid": published.kid}
        if fault in ("bad_signature", "spoofed_email"):
            key = unpublished
        elif fault == "unpublished_key":
            key, header = unpublished, {"alg": "RS256", "kid": unpublished.kid}
        elif fault == "wrong_aud":
            claims["aud"] = "someone-else"
        elif fault == "wrong_iss":
            claims["iss"] = "https://evil.example"
        elif fault == "wrong_nonce":
            claims["nonce"] = "not-" + secrets.token_urlsafe(8)
        elif fault == "missing_nonce":
            claims.pop("nonce", None)
        elif fault == "expired":
            claims.update(iat=now - 7200, exp=now - 3600)
        elif fault == "missing_exp":
            del claims["exp"]
        elif fault == "alg_none":
            head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
            return f"{head}.{_b64(json.dumps(claims).encode())}."
        elif fault == "hs256_public_key":
            head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": published.kid}).encode())
            body = _b64(json.dumps(claims).encode())
            secret = published.as_pem(private=False)
            mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
            return f"{head}.{body}.{_b64(mac)}"
        elif fault == "malformed":
            return "not-a-jwt"
        elif fault == "missing_sub":
            del claims["sub"]
        elif fault == "list_aud_no_azp":
            claims["aud"] = [self.client_id, "another-client"]
        elif fault == "no_email":
            del claims["email"]
        elif fault == "escape_email":
            claims["email"] = "\x1b]0;pwned\x07al\u202eice@faulty.test\x1b[2J"
        if fault == "spoofed_email":
            claims["email"] = SPOOFED_EMAIL
        return jwt.encode(header, claims, key)

    # ---- serving ---------------------------------------------------------------------------------
    def _enter(self) -> None:
        with self._changed:
            self._active += 1

    def _leave(self) -> None:
        with self._changed:
            self._active -= 1
            self._changed.notify_all()

    def _note_error(self, exc: BaseException | None) -> None:
        if isinstance(exc, OSError):  # the client hung up: it gave up waiting, as it should
            return
        with self._changed:
            self.errors.append(repr(exc))

    def _endpoint(self, path: str) -> str:
        if not path.startswith(self._prefix + "/"):
            return "unknown"
        rest = path[len(self._prefix) :]
        return {
            "/.well-known/openid-configuration": "discovery",
            "/.well-known/oauth-authorization-server": "discovery",
            "/authorize": "authorize",
            "/token": "token",
            "/revoke": "revoke",
            "/jwks": "jwks",
            "/device/code": "device",
            "/userinfo": "userinfo",
            "/stolen": "stolen",
        }.get(rest, "unknown")

    def _serve(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(min(length, MAX_BODY)) if length else b""
        form = dict(parse_qsl(body.decode("utf-8", "replace"))) if handler.command == "POST" else {}
        endpoint = self._endpoint(parts.path)
        with self._changed:
            self._seen.append(
                Seen(
                    endpoint,
                    handler.command,
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    form,
                    time.monotonic(),
                )
            )
            mode = self.faults.get(endpoint)
            self._changed.notify_all()
        if mode == "hang":
            self._release.wait(self.hang_seconds)
            return  # close without a word
        answer = self._fault(endpoint, mode) if mode is not None else None
        if answer is None:
            answer = self._normal(endpoint, handler, dict(parse_qsl(parts.query)), form)
        if mode == "redirect_302_with_token":
            answer = _Answer(302, answer.body, headers={"Location": self.url("/stolen")})
        if mode in VALUE_FAULTS and answer.status == 200 and answer.body.endswith(b"}"):
            answer = _Answer(200, answer.body[:-1] + b", " + VALUE_FAULTS[mode] + b"}")
        self._send(handler, answer, trickle=mode == "trickle")

    def _fault(self, endpoint: str, mode: str) -> _Answer | None:
        """The spoiled answer for `mode`, or None when the fault spoils the normal answer instead."""
        if mode == "500_html":
            return _Answer(500, ERROR_PAGE.encode(), "text/html; charset=utf-8")
        if mode == "garbage_200":
            return _Answer(200, f"<html><body>{MARKER}: maintenance</body></html>".encode(), "text/html")
        if mode == "json_array":
            return _json([{"error": MARKER}])
        if mode == "redirect_302":
            return _Answer(302, b"", "text/plain", {"Location": self.url("/stolen")})
        if mode == "invalid_json":
            return _Answer(200, b'{"issuer": ' + MARKER.encode() + b", }")
        if mode == "truncated_json":
            whole = json.dumps(self._discovery() if endpoint == "discovery" else self._tokens(None, None))
            return _Answer(200, whole[: len(whole) // 2].encode())
        if mode == "missing_endpoints":
            return _json({"issuer": self.issuer})
        if mode == "other_issuer":
            return _json({**self._discovery(), "issuer": "https://evil.example"})
        if mode == "foreign_http_endpoints":
            evil = "http://evil.example"
            doc = self._discovery()
            return _json(
                {k: v.replace(self.issuer, evil) if k.endswith("_endpoint") else v for k, v in doc.items()}
            )
        if mode == "other_sub":
            return _json({"sub": "mallory", "email": SPOOFED_EMAIL})
        if mode == "deep_nesting":
            return _Answer(200, b"[" * 100_000)
        if mode == "huge_answer":
            return _Answer(200, _huge_answer())
        if mode == "too_large":
            return _json({**self._discovery(), "padding": "x" * (1024 * 1024)})
        if mode == "no_access_token":
            return _json({"token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-unused"})
        if mode == "token_type_mac":
            return _json({**self._tokens(None, None), "token_type": "mac"})
        if mode in ("invalid_grant", "slow_down", "access_denied"):
            return _json({"error": mode}, 400)
        if mode == "error_markup":
            return _json({"error": MARKUP, "error_description": MARKUP + " " + MARKER}, 400)
        if mode == "error_control_chars":
            return _json({"error": CONTROL_CHARS, "error_description": CONTROL_CHARS}, 400)
        if mode == "unknown_kid":
            return _json({"keys": [_keys()[2].as_dict(private=False)]})
        if mode == "no_keys":
            return _json({"keys": "none"})
        if mode == "missing_user_code":
            answer = self._device_code()
            return _json({k: v for k, v in answer.items() if k != "user_code"})
        if mode == "javascript_uri":
            return _json({**self._device_code(), "verification_uri": "javascript:alert(1)//"})
        return None  # trickle, redirect_302_with_token: the normal answer, delivered badly

    def _normal(
        self, endpoint: str, handler: _Handler, query: dict[str, str], form: dict[str, str]
    ) -> _Answer:
        if endpoint == "discovery":
            return _json(self._discovery())
        if endpoint == "jwks":
            return _json({"keys": [_keys()[0].as_dict(private=False)]})
        if endpoint == "token":
            return self._token(form)
        if endpoint == "revoke":
            with self._changed:
                self._refresh_tokens.discard(form.get("token", ""))
            return _Answer(200, b"")
        if endpoint == "device":
            if form.get("client_id") != self.client_id:
                return _json({"error": "invalid_client"}, 401)
            return _json(self._device_code())
        if endpoint == "userinfo":
            return _json({"sub": "alice", "email": EMAIL})
        if endpoint == "authorize":
            return _Answer(
                302,
                b"",
                "text/plain",
                {"Location": self.authorize(self.url(handler.path[len(self._prefix) :]))},
            )
        return _Answer(404, b"not found", "text/plain")

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "revocation_endpoint": self.url("/revoke"),
            "jwks_uri": self.url("/jwks"),
            "device_authorization_endpoint": self.url("/device/code"),
            "userinfo_endpoint": self.url("/userinfo"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def _device_code(self) -> dict[str, Any]:
        device_code = "dc-" + secrets.token_urlsafe(24)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        with self._changed:
            self._devices[device_code] = _Device(user_code)
            self.issued.append(device_code)
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.url("/device"),
            "verification_uri_complete": self.url(f"/device?user_code={user_code}"),
            "expires_in": self.device_expires_in,
            "interval": self.device_interval,
        }

    def _tokens(self, nonce: str | None, fault: str | None, *, with_id_token: bool = True) -> dict[str, Any]:
        access_token, refresh_token = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        answer: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": refresh_token,
        }
        if with_id_token:
            answer["id_token"] = self.id_token(nonce=nonce, fault=fault)
        with self._changed:
            self._refresh_tokens.add(refresh_token)
            self.issued.extend([access_token, refresh_token])
        return answer

    def _token(self, form: dict[str, str]) -> _Answer:
        if form.get("client_id") != self.client_id:
            return _json({"error": "invalid_client"}, 401)
        grant_type = form.get("grant_type", "")
        with self._changed:
            if grant_type == "authorization_code":
                code = self._codes.pop(form.get("code", ""), None)  # one-time, whatever happens next
                verifier = form.get("code_verifier", "")
                challenge = _b64(hashlib.sha256(verifier.encode()).digest())
                if (
                    code is None
                    or code.redirect_uri != form.get("redirect_uri")
                    or challenge != code.challenge
                ):
                    return _json({"error": "invalid_grant"}, 400)
                nonce, fault, with_id = code.nonce, self.id_token_fault, True
            elif grant_type == "refresh_token":
                token = form.get("refresh_token", "")
                if token not in self._refresh_tokens:
                    return _json({"error": "invalid_grant"}, 400)
                self._refresh_tokens.discard(token)  # rotated
                nonce, fault, with_id = None, self.refresh_id_token_fault, self.id_token_on_refresh
            elif grant_type == DEVICE_GRANT:
                device = self._devices.get(form.get("device_code", ""))
                if device is None:
                    return _json({"error": "invalid_grant"}, 400)
                if device.denied:
                    return _json({"error": "access_denied"}, 400)
                if not device.approved:
                    return _json({"error": "authorization_pending"}, 400)
                del self._devices[form["device_code"]]
                nonce, fault, with_id = None, self.id_token_fault, True
            else:
                return _json({"error": "unsupported_grant_type"}, 400)
            self._granted.append(grant_type)
        return _json(self._tokens(nonce, fault, with_id_token=with_id))

    def _send(self, handler: _Handler, answer: _Answer, *, trickle: bool) -> None:
        reasons = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
        handler.send_response_only(answer.status, reasons.get(answer.status, "Internal Server Error"))
        handler.send_header("Content-Type", answer.content_type)
        padding = round(self.trickle_seconds / TRICKLE_STEP) if trickle else 0
        handler.send_header("Content-Length", str(padding + len(answer.body)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if not trickle:
            handler.wfile.write(answer.body)
            return
        handler.wfile.flush()
        steps = max(1, round(self.trickle_seconds / TRICKLE_STEP))
        for _ in range(steps):  # JSON allows leading whitespace: each byte is quick, the whole is slow
            handler.wfile.write(b" ")
            handler.wfile.flush()
            if self._release.wait(TRICKLE_STEP):
                return
        handler.wfile.write(answer.body)
