"""A hostile web page in the same browser as the portal: Debian's Chromium, driven by Playwright.

The threat of SPEC section 6: the portal runs, the person's browser holds its session cookie (they
opened the printed link), and they open another page in the same browser. That page comes from
another loopback origin:

- ``http://localhost:<other port>``: the same *site* as the portal (ports do not make sites), so
  Chromium sends the ``SameSite=Lax`` session cookie with its requests, POSTs and frames included;
- ``http://127.0.0.1:<other port>``: another site; the cookie goes only with top-level GETs.

It tries every action of the portal (``POST /login``, ``/api-key`` with a key, ``/logout``,
``/refresh``, ``/device``, ``/device/cancel``) with everything a page has: auto-submitted forms
(top level, into a hidden frame, through a 307 redirect of its own; without and with a guessed CSRF
token), ``fetch`` POSTs (``no-cors``, simple ``cors``, preflighted ``cors``), ``fetch`` GETs that
try to read the pages and the APIs, ``<img>`` and ``<script>`` loads of every route, frames of the
pages, and popups it tries to read. After each attempt: the config file is byte-identical, the
status read with the person's session is the same, no sign-in is pending, no device flow started
(``/api/device`` says ``{"state": "none"}``); after each group of attempts, the provider has seen
nothing at all (no authorization, device authorization, token or revocation request).

DNS rebinding is simulated with Chromium's ``--host-resolver-rules`` (``rebind.test`` -> 127.0.0.1);
top-level cross-site navigations carry forged launch tokens. The portal under test is the real
uvicorn server (``PortalServer``) with one addition: an outermost ASGI wrapper that records every
request it answers (Host, Origin, Sec-Fetch-Site, whether the session cookie came with it, status,
the start of the body, Set-Cookie and framing headers), so each refusal is known to come from the
right defence. Chromium resolves only loopback names (as in tests/test_browser.py).
"""

from __future__ import annotations

import html
import http.server
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.browser import LOOPBACK_ONLY, launch_chromium
from tests.conftest import free_port
from tests.idp import TestProvider
from tests.portal import PortalServer, settings_for, signed_in_portal
from webapp.portal import Portal
from webapp.settings import Settings

REBIND = "rebind.test"
USER_FILE = (
    "# Codex CLI settings, edited by hand\n"
    'model = "o3"  # the default model\n'
    "\n"
    "[tools]\n"
    "web_search = true  # keep me\n"
)
ACTIONS = ("/login", "/api-key", "/logout", "/refresh", "/device", "/device/cancel")
READABLE = ("/", "/logout", "/device", "/api/status", "/api/device")  # the pages carry the CSRF token
GET_ROUTES = (
    "/",
    "/?token=guessed-launch-token",
    "/api/status",
    "/api/device",
    "/logout",
    "/device",
    "/auth/callback",
    "/auth/done",
    *ACTIONS,  # GET of a POST-only route: 405
)
FRAMED = ("/", "/logout", "/device", "/api/status", "/api/device", "/auth/callback", "/auth/done")
SCRIPTED = ("/api/status", "/api/device", "/")  # JSON hijacking through <script src>
GUESSED_CSRF = "guessed-" + "A" * 35
HOSTILE_KEY = "sk-hostile-0123456789abcdef"
REFUSED_CROSS_ORIGIN = b"Cross-origin request refused."
INVALID_HOST = b"Invalid Host header"
CSRF_REFUSED = "The form has expired"
PORTAL_MARKERS = ("csrf_token", "codex-portal", "signed_in", '"state"')  # any of these = the portal read
TIMEOUT_MS = 10_000

ATTACK_SCRIPT = """
"use strict";
const settle = (start) => new Promise((resolve) => {
  const timer = setTimeout(() => resolve("timeout"), 8000);
  start((value) => { clearTimeout(timer); resolve(value); });
});
window.hostile = {
  async fetch(url, init) {
    try {
      const response = await fetch(url, init);
      let body;
      try { body = await response.text(); } catch (e) { body = "unreadable: " + e; }
      return {outcome: "response", type: response.type, status: response.status, body};
    } catch (e) {
      return {outcome: "error", type: "", status: 0, body: String(e)};
    }
  },
  postFetch(url, fields, mode, json) {
    const init = {method: "POST", credentials: "include", mode};
    if (json) {
      init.headers = {"content-type": "application/json"};
      init.body = JSON.stringify(fields);
    } else {
      init.body = new URLSearchParams(fields);
    }
    return hostile.fetch(url, init);
  },
  load(tag, url) {
    return settle((done) => {
      const element = document.createElement(tag);
      element.onload = () => done("loaded");
      element.onerror = () => done("error");
      element.src = url;
      document.body.appendChild(element);
    });
  },
  frame(url, name) {
    return settle((done) => {
      const frame = document.createElement("iframe");
      frame.name = name;
      frame.onload = () => done("load");
      frame.src = url;
      document.body.appendChild(frame);
    });
  },
  post(url, fields, name) {
    const frame = document.createElement("iframe");
    frame.name = name;
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "post";
    form.action = url;
    form.target = name;
    for (const [key, value] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = key;
      input.value = value;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
    return true;
  },
  open(url) { window.victim = window.open(url, "_blank"); return true; },
  readPopup() {
    const w = window.victim;
    try {
      return "read: " + w.document.documentElement.outerHTML;
    } catch (e) {
      return "refused: " + e.name;
    }
  },
};
"""
ATTACK_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>An ordinary web page</title></head>
<body><h1>Nothing to see here</h1>
<script>{ATTACK_SCRIPT}</script>
</body></html>
"""


# ---- the portal, with every request it answers recorded -----------------------------------------
@dataclass
class Seen:
    """One request the portal answered, as it arrived and as it was answered."""

    method: str
    path: str
    query: str
    host: str
    origin: str | None
    site: str | None  # Sec-Fetch-Site
    cookie: bool  # the session cookie came with it
    status: int = 0
    body: bytes = b""  # the start of it
    set_cookie: bool = False
    frame_options: str | None = None
    csp: str = ""
    answered: threading.Event = field(default_factory=threading.Event, repr=False)  # body sent

    def __str__(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return (
            f"{self.method} {self.path}{query} Host={self.host} Origin={self.origin} Site={self.site} "
            f"cookie={self.cookie} -> {self.status} {self.body[:60]!r}"
        )

    def foreign(self, own_hosts: frozenset[str]) -> bool:
        """Caused by a page that is not the portal's own (its own pages send same-origin or none)."""
        return self.site not in ("same-origin", "none", None) or self.host not in own_hosts


class Recorder:
    """Outermost ASGI wrapper: records each request and what the portal answered."""

    def __init__(self, app: ASGIApp, *, log: list[Seen], cookie_name: str) -> None:
        self.app = app
        self.log = log
        self.cookie_name = cookie_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            host=headers.get("host", ""),
            origin=headers.get("origin"),
            site=headers.get("sec-fetch-site"),
            cookie=f"{self.cookie_name}=" in headers.get("cookie", ""),
        )
        self.log.append(seen)

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                answer = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
                seen.set_cookie = any(k.lower() == b"set-cookie" for k, _ in raw)
                seen.frame_options = answer.get("x-frame-options")
                seen.csp = answer.get("content-security-policy", "")
                seen.status = message["status"]
            elif message["type"] == "http.response.body" and len(seen.body) < 400:
                seen.body = (seen.body + message.get("body", b""))[:400]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            seen.answered.set()


class WatchedPortal(PortalServer):
    """The real portal (uvicorn on loopback, in a thread), its requests recorded, its state visible."""

    def __init__(self, settings: Settings, *, launch_token: str) -> None:
        super().__init__(settings, launch_token=launch_token)
        self.log: list[Seen] = []
        self.own_hosts = frozenset(f"{name}:{settings.port}" for name in ("localhost", "127.0.0.1", "[::1]"))

    def __enter__(self) -> WatchedPortal:
        super().__enter__()
        return self

    def _keep_app(self, app: FastAPI) -> None:  # before the app starts: the recorder sees every request
        app.add_middleware(Recorder, log=self.log, cookie_name=self.cookie_name)
        super()._keep_app(app)

    @property
    def cookie_name(self) -> str:
        return f"codex_portal_{self.settings.port}"

    @property
    def state(self) -> Portal:
        return self.portal

    def foreign_since(self, start: int) -> list[Seen]:
        return [seen for seen in self.log[start:] if seen.foreign(self.own_hosts)]


# ---- the hostile web site ----------------------------------------------------------------------
def _autosubmit(query: dict[str, list[str]]) -> str:
    action = query.pop("action")[0]
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(values[0])}">'
        for name, values in query.items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Loading</title></head><body>'
        f'<form method="post" action="{html.escape(action)}">{inputs}</form>'
        "<script>document.forms[0].submit();</script></body></html>"
    )


class HostileSite:
    """Another web site on loopback (a plain http.server on 127.0.0.1, reachable as localhost too).

    GET /attack: the attack page; GET /autosubmit?action=URL&field=value...: a form that submits
    itself on load; POST /redirect?to=URL: a 307 redirect (the browser repeats the POST there).
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                site.requests.append(f"GET {url.path}")
                if url.path == "/attack":
                    self._send(200, ATTACK_PAGE)
                elif url.path == "/autosubmit":
                    self._send(200, _autosubmit(parse_qs(url.query)))
                else:
                    self._send(404, "not here")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                url = urlsplit(self.path)
                site.requests.append(f"POST {url.path}")
                self.send_response(307)
                self.send_header("location", parse_qs(url.query)["to"][0])
                self.send_header("content-length", "0")
                self.end_headers()

            def _send(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostileSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_site() -> Iterator[HostileSite]:
    with HostileSite() as site:
        yield site


@pytest.fixture
def signed_in_config(idp: TestProvider, tmp_path: Path) -> Path:
    """A config file holding real OAuth tokens of the test provider (refreshable, revocable)."""
    config = tmp_path / "codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(USER_FILE)
    settings = settings_for(idp, config)
    with signed_in_portal(idp, settings):
        pass
    text = config.read_text()
    assert text.startswith(USER_FILE) and "refresh_token = " in text
    return config


@pytest.fixture
def portal(idp: TestProvider, signed_in_config: Path) -> Iterator[WatchedPortal]:
    settings = settings_for(idp, signed_in_config)
    with WatchedPortal(settings, launch_token=secrets.token_urlsafe(32)) as server:
        yield server


# ---- what must not change ----------------------------------------------------------------------
class Guard:
    """The state before the attacks, and the check that none of it changed.

    After every attempt: the config file's bytes, the portal's pending sign-ins and device flow, and
    `/api/status` and `/api/device` read with the person's own session cookie. The provider's events
    (one round trip to it, and a new client each time: ~0.1 s) after each group of attempts.
    """

    def __init__(self, portal: WatchedPortal, idp: TestProvider, config: Path) -> None:
        self.portal = portal
        self.idp = idp
        self.config = config
        self.config_bytes = config.read_bytes()
        self.events = len(idp.events())
        self.session: httpx2.Client | None = None
        self.status: dict[str, Any] = {}
        self.checks = 0

    def use_session_of(self, context: BrowserContext) -> None:
        """Read the status from now on with the session cookie the person's browser holds."""
        cookies = {c["name"]: c["value"] for c in context.cookies() if c["name"] == self.portal.cookie_name}
        assert cookies, "the browser holds no session"
        self.close()
        self.session = httpx2.Client(
            base_url=self.portal.base_url,
            cookies=cookies,
            follow_redirects=False,
            timeout=10,
            trust_env=False,
            limits=httpx2.Limits(max_keepalive_connections=0),  # see test_keep_alive_responses_...
        )
        self.status = self._api("/api/status")
        assert self.status["signed_in"] is True and self.status["method"] == "oauth", self.status

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _api(self, path: str) -> dict[str, Any]:
        assert self.session is not None
        response = self.session.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        body: dict[str, Any] = response.json()
        return body

    def check(self, what: str, *, provider: bool = False) -> None:
        self.checks += 1
        assert self.config.read_bytes() == self.config_bytes, f"{what}: the config file changed"
        state = self.portal.state
        assert len(state.logins) == 0, f"{what}: a browser sign-in was started"
        assert state.device is None, f"{what}: a sign-in with a code was started"
        if self.session is not None:
            assert self._api("/api/status") == self.status, f"{what}: the status changed"
            assert self._api("/api/device") == {"state": "none"}, f"{what}: a device flow is visible"
        if provider:
            new = self.idp.events()[self.events :]
            assert not new, f"{what}: the provider saw {[event['event'] for event in new]}"


@dataclass
class Tally:
    """What the hostile pages tried and what reached the portal."""

    attempts: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)  # "METHOD status" of foreign requests
    outcomes: Counter[str] = field(default_factory=Counter)  # what the hostile page got
    posts_with_cookie: int = 0
    posts: int = 0

    def summary(self) -> str:
        return (
            f"{sum(self.attempts.values())} attempts {dict(self.attempts)}; "
            f"{sum(self.requests.values())} requests reached the portal {dict(self.requests)}; "
            f"{self.posts_with_cookie} of {self.posts} POSTs carried the session cookie; "
            f"the page got {dict(self.outcomes)}"
        )


class Attacker:
    """Runs one attempt at a time, checks how the portal answered it, then that nothing changed."""

    def __init__(self, portal: WatchedPortal, guard: Guard, page: Page, victim: Page, origin: str) -> None:
        self.portal = portal
        self.guard = guard
        self.page = page  # the hostile page: it stays open and runs the in-page attempts
        self.victim = victim  # a tab the hostile site navigates at top level
        self.origin = origin
        self.tally = Tally()
        self._frames = 0

    def attempt(self, kind: str, target: str, act: Callable[[], None]) -> list[Seen]:
        start = len(self.portal.log)
        act()
        seen = self.portal.foreign_since(start)
        what = f"{kind} {target} from {self.origin}"
        for request in seen:  # the browser may have the headers before the body is sent
            assert request.answered.wait(TIMEOUT_MS / 1000), f"{what}: unanswered {request}"
            assert not request.set_cookie, f"{what}: the portal set a cookie: {request}"
            assert request.frame_options == "DENY", f"{what}: no X-Frame-Options: DENY: {request}"
            assert "frame-ancestors 'none'" in request.csp, f"{what}: no frame-ancestors 'none': {request}"
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                assert (request.status, request.body) == (403, REFUSED_CROSS_ORIGIN), (
                    f"{what}: not refused as cross-origin: {request}"
                )
                self.tally.posts += 1
                self.tally.posts_with_cookie += request.cookie
            self.tally.requests[f"{request.method} {request.status}"] += 1
        self.tally.attempts[kind] += 1
        self.guard.check(what)
        return seen

    def _fields(self, path: str, csrf: bool) -> dict[str, str]:
        fields = {"csrf_token": GUESSED_CSRF} if csrf else {}
        if path == "/api-key":
            fields["api_key"] = HOSTILE_KEY
        return fields

    def _portal_post(self, path: str) -> Callable[[Response], bool]:
        return _answer_to("POST", f"{self.portal.base_url}{path}")

    # ---- forms ----
    def top_level_form(self, path: str, *, csrf: bool, via_redirect: bool = False) -> None:
        action = f"{self.portal.base_url}{path}"
        if via_redirect:
            action = f"{self.origin}/redirect?" + urlencode({"to": action})
        url = f"{self.origin}/autosubmit?" + urlencode({"action": action, **self._fields(path, csrf)})

        def act() -> None:
            with self.victim.expect_response(self._portal_post(path), timeout=TIMEOUT_MS) as answer:
                self.victim.goto(url, wait_until="commit")
            assert answer.value.status == 403
            self.victim.wait_for_load_state()

        kind = "form, top level, via a 307 redirect" if via_redirect else "form, top level"
        kind += ", guessed csrf_token" if csrf else ", no csrf_token"
        seen = self.attempt(kind, path, act)
        assert [r.method for r in seen] == ["POST"], [str(r) for r in seen]
        assert "Cross-origin request refused." in (self.victim.text_content("body") or "")
        self.tally.outcomes["form, top level: the refusal"] += 1

    def framed_form(self, path: str, *, csrf: bool) -> None:
        self._frames += 1
        name = f"post{self._frames}"

        def act() -> None:
            with self.page.expect_response(self._portal_post(path), timeout=TIMEOUT_MS):
                self.page.evaluate(
                    "([url, fields, name]) => hostile.post(url, fields, name)",
                    [f"{self.portal.base_url}{path}", self._fields(path, csrf), name],
                )

        kind = "form into a hidden frame" + (", guessed csrf_token" if csrf else ", no csrf_token")
        seen = self.attempt(kind, path, act)
        assert [r.method for r in seen] == ["POST"], [str(r) for r in seen]

    # ---- fetch ----
    def post_fetch(self, path: str, mode: str, *, json: bool = False) -> None:
        result: dict[str, Any] = {}

        def act() -> None:
            result.update(
                self.page.evaluate(
                    "([url, fields, mode, json]) => hostile.postFetch(url, fields, mode, json)",
                    [f"{self.portal.base_url}{path}", self._fields(path, True), mode, json],
                )
            )

        kind = f"fetch POST mode={mode}" + (" (JSON: preflighted)" if json else "")
        seen = self.attempt(kind, path, act)
        self.tally.outcomes[f"fetch: {result['outcome']} {result['type']}".strip()] += 1
        assert result["outcome"] == "error" or (result["type"], result["body"]) == ("opaque", ""), result
        if json:  # the preflight fails: the POST itself is never sent
            assert [r.method for r in seen] == ["OPTIONS"], [str(r) for r in seen]
            assert not any(r.status == 200 for r in seen)
        else:
            assert [r.method for r in seen] == ["POST"], [str(r) for r in seen]

    def read_fetch(self, path: str, mode: str) -> None:
        result: dict[str, Any] = {}

        def act() -> None:
            result.update(
                self.page.evaluate(
                    "([url, mode]) => hostile.fetch(url, {credentials: 'include', mode})",
                    [f"{self.portal.base_url}{path}", mode],
                )
            )

        seen = self.attempt(f"fetch GET mode={mode}, read the body", path, act)
        self.tally.outcomes[f"fetch: {result['outcome']} {result['type']}".strip()] += 1
        assert seen, f"fetch {path}: no request reached the portal"
        assert result["outcome"] == "error" or (result["type"], result["body"]) == ("opaque", ""), result
        assert not any(marker in result["body"] for marker in PORTAL_MARKERS), result

    # ---- subresources, frames, popups ----
    def load(self, tag: str, path: str) -> None:
        result: list[str] = []

        def act() -> None:
            result.append(
                self.page.evaluate("([tag, url]) => hostile.load(tag, url)", [tag, self._url(path)])
            )

        seen = self.attempt(f"<{tag} src>", path, act)
        self.tally.outcomes[f"<{tag}>: {result[0]}"] += 1
        assert seen, f"<{tag} src={path}>: no request reached the portal"
        assert result == ["error"], f"<{tag} src={path}>: {result}"

    def frame(self, path: str) -> None:
        self._frames += 1
        name = f"frame{self._frames}"
        result: list[str] = []

        def act() -> None:
            result.append(
                self.page.evaluate("([url, name]) => hostile.frame(url, name)", [self._url(path), name])
            )

        seen = self.attempt("<iframe src>", path, act)
        assert result == ["load"] and seen, f"<iframe src={path}>: {result}, {[str(r) for r in seen]}"
        element = self.page.query_selector(f'iframe[name="{name}"]')
        frame = element.content_frame() if element is not None else None
        assert frame is not None, f"<iframe src={path}>: no frame"
        assert frame.url.startswith("chrome-error://"), f"<iframe src={path}> shows {frame.url}"
        self.tally.outcomes["<iframe>: an error page"] += 1
        content = frame.content()
        assert not any(marker in content for marker in PORTAL_MARKERS), (
            f"<iframe src={path}> renders the portal"
        )

    def popup(self, path: str) -> None:
        result: list[str] = []

        def act() -> None:
            with self.page.context.expect_page(timeout=TIMEOUT_MS) as opened:
                self.page.evaluate("url => hostile.open(url)", self._url(path))
            popup = opened.value
            popup.wait_for_load_state()
            result.append(self.page.evaluate("hostile.readPopup()"))
            popup.close()

        seen = self.attempt("window.open, read the window", path, act)
        self.tally.outcomes[f"window.open: {result[0][:40]}"] += 1
        assert seen, f"window.open({path}): no request reached the portal"
        assert not result[0].startswith("read:"), (
            f"window.open({path}): the hostile page read {result[0][:200]}"
        )

    def _url(self, path: str) -> str:
        return f"{self.portal.base_url}{path}"


def _answer_to(method: str, url: str) -> Callable[[Response], bool]:
    return lambda response: response.request.method == method and response.url == url


def _open_session(context: BrowserContext, portal: WatchedPortal) -> Page:
    """The person opens the printed link: the context now holds the session cookie."""
    mine = context.new_page()
    mine.goto(portal.launch_url)
    assert mine.url == f"{portal.base_url}/"
    assert (mine.text_content("h1") or "").strip() == "Signed in"
    assert [cookie["name"] for cookie in context.cookies()] == [portal.cookie_name]
    return mine


@pytest.fixture
def guard(portal: WatchedPortal, idp: TestProvider, signed_in_config: Path) -> Iterator[Guard]:
    watch = Guard(portal, idp, signed_in_config)
    yield watch
    watch.close()


# ---- 1. a hostile page on another loopback origin ----------------------------------------------
@pytest.mark.parametrize("hostile_host", ["localhost", "127.0.0.1"], ids=["same-site", "cross-site"])
def test_a_hostile_page_in_the_same_browser_can_change_or_read_nothing(
    browser: Browser, portal: WatchedPortal, guard: Guard, hostile_site: HostileSite, hostile_host: str
) -> None:
    context = browser.new_context()
    try:
        mine = _open_session(context, portal)
        guard.use_session_of(context)
        guard.check("after the person opened the portal", provider=True)
        origin = f"http://{hostile_host}:{hostile_site.port}"
        page = context.new_page()
        page.goto(f"{origin}/attack")
        attacker = Attacker(portal, guard, page, context.new_page(), origin)

        for path in ACTIONS:
            attacker.top_level_form(path, csrf=True)
            attacker.top_level_form(path, csrf=False, via_redirect=True)
            attacker.framed_form(path, csrf=False)
            attacker.framed_form(path, csrf=True)
            attacker.post_fetch(path, "no-cors")
            attacker.post_fetch(path, "cors")
            attacker.post_fetch(path, "cors", json=True)
            guard.check(f"every attempt on {path} from {origin}", provider=True)
        for path in READABLE:
            attacker.read_fetch(path, "cors")
            attacker.read_fetch(path, "no-cors")
        for path in GET_ROUTES:
            attacker.load("img", path)
        for path in SCRIPTED:
            attacker.load("script", path)
        guard.check(f"fetch GETs, images and scripts from {origin}", provider=True)
        for path in FRAMED:
            attacker.frame(path)
        for path in ("/", "/logout"):
            attacker.popup(path)
        guard.check(f"frames and popups from {origin}", provider=True)

        tally = attacker.tally
        print(f"\n{origin}: {tally.summary()}")
        expected = 6 * 7 + 2 * len(READABLE) + len(GET_ROUTES) + len(SCRIPTED) + len(FRAMED) + 2
        assert sum(tally.attempts.values()) == expected
        assert tally.posts == 6 * 6  # every form and simple fetch POST reached the portal, and was refused
        if hostile_host == "localhost":  # the same site: the cookie went along, the Origin check stood
            assert tally.posts_with_cookie == tally.posts
        else:  # another site: SameSite=Lax kept the cookie back
            assert tally.posts_with_cookie == 0

        # The person's own tab still works, and shows the same status.
        mine.reload()
        assert (mine.text_content("h1") or "").strip() == "Signed in"
        assert mine.evaluate("async () => (await fetch('/api/status')).json()") == guard.status
    finally:
        context.close()


def test_forms_on_the_portals_own_origin_still_need_the_sessions_csrf_token(
    browser: Browser, portal: WatchedPortal, guard: Guard
) -> None:
    """The CSRF token is the second wall: were the Origin check bypassed (a form injected into the
    portal's own page, same origin), a post without this session's token is still refused."""
    context = browser.new_context()
    try:
        tab = _open_session(context, portal)
        guard.use_session_of(context)
        other_session = portal.state.sessions.get(portal.state.sessions.open())
        assert other_session is not None
        tokens = {
            "none": None,
            "empty": "",
            "guessed": GUESSED_CSRF,
            "another session's": other_session.csrf_token,
        }
        tried = 0
        for path in ACTIONS:
            for which, token in tokens.items():
                # The tab stays on the portal's origin: its status page, then its 403 pages.
                assert tab.url.startswith(f"{portal.base_url}/")
                fields = {"api_key": HOSTILE_KEY} if path == "/api-key" else {}
                if token is not None:
                    fields["csrf_token"] = token
                url = f"{portal.base_url}{path}"
                with tab.expect_response(_answer_to("POST", url), timeout=TIMEOUT_MS) as answer:
                    tab.evaluate(
                        """([url, fields]) => {
                            const form = document.createElement("form");
                            form.method = "post";
                            form.action = url;
                            for (const [key, value] of Object.entries(fields)) {
                                const input = document.createElement("input");
                                input.type = "hidden"; input.name = key; input.value = value;
                                form.appendChild(input);
                            }
                            document.body.appendChild(form);
                            form.submit();
                        }""",
                        [url, fields],
                    )
                response = answer.value
                assert response.status == 403, f"{path} with {which} csrf_token: {response.status}"
                assert response.request.header_value("sec-fetch-site") == "same-origin"
                assert CSRF_REFUSED in response.text(), f"{path} with {which} csrf_token"
                guard.check(f"same-origin {path} with {which} csrf_token")
                tried += 1
            guard.check(f"same-origin posts to {path}", provider=True)
        print(f"\nsame-origin forms without this session's csrf_token: {tried} tried, all refused")
    finally:
        context.close()


# ---- 2. DNS rebinding --------------------------------------------------------------------------
REBIND_SCRIPT = """async ([token, fields]) => {
    const results = [];
    for (const path of ["/", "/api/status", "/api/device", "/logout", "/device", "/?token=" + token]) {
        results.push([path, await hostile.fetch(path, {credentials: "include"})]);
    }
    for (const [path, body] of Object.entries(fields)) {
        results.push([path, await hostile.postFetch(path, body, "same-origin", false)]);
    }
    return results;
}"""


def test_dns_rebinding_is_refused_by_the_host_check(
    playwright: Playwright, portal: WatchedPortal, guard: Guard
) -> None:
    """``rebind.test`` resolves to 127.0.0.1 (``--host-resolver-rules``), as the attacker's name does
    once rebound: to the browser, ``http://rebind.test:<port>`` is the attacker's own origin, so its
    script may read whatever that origin answers. The script runs in a document of that origin that
    came from 127.0.0.1 (the portal's own refusal, the CSP bypassed: the attacker's page has none). A
    page served from a public address would be stopped by Chromium's Private Network Access before
    reaching loopback; other browsers have no such guard, so the portal's Host check must be the wall.
    """
    port = portal.settings.port
    rebound = f"http://{REBIND}:{port}"
    chromium = launch_chromium(playwright, resolver_rules=f"MAP {REBIND} 127.0.0.1, {LOOPBACK_ONLY}")
    try:
        context = chromium.new_context(bypass_csp=True)
        page = context.new_page()
        fields = {path: {"csrf_token": GUESSED_CSRF, "api_key": HOSTILE_KEY} for path in ACTIONS}
        tried = 0

        def everything_refused(start: int, what: str) -> None:
            seen = [request for request in portal.log[start:] if request.host != f"localhost:{port}"]
            assert seen, f"{what}: nothing reached the portal"
            for request in seen:
                assert request.answered.wait(TIMEOUT_MS / 1000), f"{what}: unanswered {request}"
                assert request.host == f"{REBIND}:{port}", f"{what}: {request}"
                assert request.status == 400 and request.body.startswith(INVALID_HOST), f"{what}: {request}"
                assert not request.set_cookie, f"{what}: {request}"
            assert not [c for c in context.cookies() if c["domain"] != "localhost"], context.cookies()
            guard.check(what)

        # The person (or the attacker) opens the rebound name, even with the real launch token.
        for path in ("/", f"/?token={portal.launch_token}", "/logout", "/api/status"):
            start = len(portal.log)
            response = page.goto(f"{rebound}{path}")
            assert response is not None and response.status == 400
            assert "Invalid Host header" in (page.text_content("body") or "")
            everything_refused(start, f"navigation to {REBIND}{path.split('?')[0]}")
            tried += 1
        assert context.cookies() == []

        for round_ in ("before", "after"):
            page.goto(f"{rebound}/")  # the attacker's document on the rebound origin
            page.add_script_tag(content=ATTACK_SCRIPT)
            start = len(portal.log)
            results = page.evaluate(REBIND_SCRIPT, [portal.launch_token, fields])
            for path, result in results:  # the same origin for the browser: the body is readable
                assert result["status"] == 400, (path, result)
                assert result["body"].startswith(INVALID_HOST.decode()), (path, result)
            for path in ACTIONS:
                with page.expect_response(
                    _answer_to("POST", f"{rebound}{path}"), timeout=TIMEOUT_MS
                ) as answer:
                    page.evaluate(
                        "([url, fields, name]) => hostile.post(url, fields, name)",
                        [f"{rebound}{path}", fields[path], f"{round_}{path}"],
                    )
                assert answer.value.status == 400
            everything_refused(start, f"the rebound page, {round_} the person opened the portal")
            tried += len(results) + len(ACTIONS)
            if round_ == "before":
                # The launch token was not spent: the real link, on localhost, still opens the session.
                _open_session(context, portal)
                guard.use_session_of(context)
        guard.check("after DNS rebinding", provider=True)
        print(f"\nDNS rebinding: {tried} attempts, all answered 400 Invalid Host header, no cookie set")
        context.close()
    finally:
        chromium.close()


# ---- 3. top-level cross-site navigations -------------------------------------------------------
def test_cross_site_navigations_with_a_forged_token_change_nothing(
    browser: Browser, portal: WatchedPortal, guard: Guard, hostile_site: HostileSite
) -> None:
    real = portal.launch_token
    forged = [
        secrets.token_urlsafe(32),
        "",
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        real[:16],
        real + "x",
        real.swapcase() if real.swapcase() != real else real + real,
    ]
    attack = f"http://127.0.0.1:{hostile_site.port}/attack"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(attack)
        tried = 0

        def navigate(path: str) -> Response:
            """The hostile page sends its tab to the portal (as a link or `location = ...` does)."""
            nonlocal tried
            start = len(portal.log)
            with page.expect_navigation(timeout=TIMEOUT_MS) as navigation:
                page.evaluate("url => { location.href = url; }", f"{portal.base_url}{path}")
            response = navigation.value
            assert response is not None
            seen = portal.foreign_since(start)
            assert all(r.answered.wait(TIMEOUT_MS / 1000) for r in seen), [str(r) for r in seen]
            assert seen and seen[0].site == "cross-site", [str(r) for r in seen]
            assert all(r.method == "GET" and not r.set_cookie for r in seen), [str(r) for r in seen]
            guard.check(f"cross-site navigation to {path.split('=')[0]}")
            page.goto(attack)
            tried += 1
            return response

        # Before the person opened the link: no forged token opens a session, nor spends the real one.
        for token in forged:
            response = navigate(f"/?token={token}")
            assert response.status == 403
            assert context.cookies() == []
        assert navigate("/").status == 403
        guard.check("forged launch tokens", provider=True)

        _open_session(context, portal)
        guard.use_session_of(context)
        cookie = context.cookies()

        # With the session: forged tokens and the replayed real one lead to the status page; every
        # GET shows a page and changes nothing.
        for token in [*forged, real]:
            response = navigate(f"/?token={token}")
            assert response.status == 200 and response.url == f"{portal.base_url}/"
            assert context.cookies() == cookie
        for path in (
            "/",
            "/logout",
            "/device",
            "/api/status",
            "/api/device",
            "/auth/callback?code=x&state=y",
        ):
            assert navigate(path).status in (200, 400)
            assert context.cookies() == cookie
        guard.check("cross-site navigations with the session", provider=True)
        print(f"\ncross-site top-level navigations: {tried}, nothing changed")
    finally:
        context.close()


# ---- found on the way --------------------------------------------------------------------------
def test_keep_alive_responses_are_not_held_back_by_nagle(tmp_path: Path) -> None:
    settings = Settings(
        config_path=tmp_path / "config.toml",
        issuer="http://127.0.0.1:9",
        port=free_port(),
        open_browser=False,
    )
    with PortalServer(settings, launch_token=secrets.token_urlsafe(32)) as server:
        with httpx2.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
            durations = []
            for _ in range(15):  # one connection, kept alive, as a browser does
                began = time.perf_counter()
                assert client.get("/static/favicon.svg").status_code == 200
                durations.append(time.perf_counter() - began)
    median = sorted(durations)[len(durations) // 2]
    assert median < 0.025, f"median {median * 1000:.0f} ms per request on a kept-alive connection"
