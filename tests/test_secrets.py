"""Secrets never leak: every flow against the real provider, with all logging at DEBUG.

The journey: open the launch link, sign in in the browser (PKCE), Refresh, save an API key, sign in
with a code (device flow), then from the CLI `token` (which refreshes an expired token), `status
--json`; sign out on the page; `login --api-key`, `token`, `status --json` from the CLI again.

Every secret value met on the way is collected: the launch token, the session cookie, the CSRF
token, the authorization code and state (from the URLs the test handles), the PKCE verifier (taken
from the portal's pending sign-in before the callback: the test never sees it otherwise), the
device code and user code, every access, refresh and ID token and API key the config file held.
None may appear, whole or as any of its aligned 16-character pieces (so no 31 characters of one in
a row), in:

- a log record of any logger (root at DEBUG with a collecting handler; uvicorn's own loggers, which
  do not propagate, get it too; records of the test's own HTTP clients, on the main thread, are the
  browser's business and left out), or anything written to this process's stdout/stderr;
- the stdout/stderr of the CLI processes, run with logging at DEBUG (except the stdout of `token`,
  which prints the token by design);
- any page or JSON the browser got (except the CSRF token in its hidden fields and the user code on
  the device page, both meant to be there);
- any URL the browser ends on after redirects, or a same-origin Location it is sent to;
- the repr of the objects that hold them (what a debug line or a traceback with locals prints).
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pytest
import tomlkit
import uvicorn

from tests.idp import TestProvider
from tests.portal import PortalServer, settings_for
from webapp.oauth import LoginRequest, PendingLogin
from webapp.settings import Settings
from webapp.stores import ConfigTomlStore

PIECE = 16  # any run of this many characters of a secret counts as a leak
USER_FILE = '# mine\nmodel = "o3"\n'
CLI = (
    "import logging, sys; "
    "logging.basicConfig(level=logging.DEBUG, format='%(name)s %(levelname)s %(message)s'); "
    "from webapp.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


# ---- capturing every log record ----------------------------------------------------------------------


class Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s [%(threadName)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        """Every record as it would be printed (with its traceback), but the test's own HTTP clients'."""
        main = threading_main_ident()
        return [
            self.format(record) + " " + repr(record.args)
            for record in self.records
            if not (record.thread == main and record.name.split(".")[0] in ("httpx2", "httpcore2"))
        ]


def threading_main_ident() -> int | None:
    return threading.main_thread().ident


@dataclass
class LogCapture:
    collector: Collector = field(default_factory=Collector)
    saved: dict[str, tuple[int, list[logging.Handler], bool, bool]] = field(default_factory=dict)

    def _loggers(self) -> list[logging.Logger]:
        manager = logging.Logger.manager
        return [
            logging.getLogger(),
            *(v for v in manager.loggerDict.values() if isinstance(v, logging.Logger)),
        ]

    def start(self) -> None:
        for logger in self._loggers():
            self.saved[logger.name] = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        self.loud()

    def loud(self) -> None:
        """Everything at DEBUG, collected wherever it would be printed. A logger that neither
        propagates nor has a handler (uvicorn.access under access_log=False) prints nothing, and
        stays so: a handler there would switch uvicorn's access log on."""
        root = logging.getLogger()
        for logger in self._loggers():
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
            wanted = logger is root or (not logger.propagate and logger.handlers)
            if wanted and self.collector not in logger.handlers:
                logger.addHandler(self.collector)

    def stop(self) -> None:
        for logger in self._loggers():
            if logger.name in self.saved:
                level, handlers, propagate, disabled = self.saved[logger.name]
                logger.setLevel(level)
                logger.handlers = handlers
                logger.propagate, logger.disabled = propagate, disabled
            else:
                logger.setLevel(logging.NOTSET)
                logger.removeHandler(self.collector)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()


# ---- the portal, with its state in reach -------------------------------------------------------------


class InspectedPortal(PortalServer):
    """The real server (which keeps its app: `.portal`), waiting on its device sign-in task."""

    def wait_for_device_login(self, timeout: float) -> None:
        """Until the portal's device sign-in task has ended (an event, not a poll)."""
        assert self._loop is not None and self.portal.device is not None
        task = self.portal.device.task
        assert task is not None

        async def ended() -> None:
            await asyncio.wait({task}, timeout=timeout)

        asyncio.run_coroutine_threadsafe(ended(), self._loop).result(timeout + 5)
        assert task.done()


# ---- the browser, recording what it keeps -------------------------------------------------------------


@dataclass
class Browser:
    client: httpx2.Client
    origin: str
    pages: list[tuple[str, str]] = field(default_factory=list)  # (url, body) of every portal response
    kept: list[str] = field(default_factory=list)  # the URL each navigation ended on
    locations: list[str] = field(default_factory=list)  # same-origin redirects followed
    away: list[str] = field(default_factory=list)  # redirects that leave for the provider

    def go(self, method: str, url: str, data: dict[str, str] | None = None) -> httpx2.Response:
        """One navigation: follow the portal's own redirects; stop at one that leaves it."""
        response = self.client.request(method, url, data=data)
        for _ in range(10):
            self.pages.append((str(response.url), response.text))
            if not response.is_redirect:
                self.kept.append(str(response.url))
                return response
            target = urljoin(str(response.url), response.headers["location"])
            if not target.startswith(self.origin + "/"):
                self.away.append(target)
                return response
            self.locations.append(target)
            response = self.client.get(target)
        raise AssertionError("too many redirects")

    def csrf(self) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', self.go("GET", "/").text)
        assert match
        return match.group(1)


# ---- the secrets ---------------------------------------------------------------------------------


@dataclass
class Secrets:
    values: dict[str, str] = field(default_factory=dict)  # value -> what it is

    def add(self, what: str, value: object) -> None:
        if isinstance(value, str) and value:
            self.values.setdefault(value, what)

    def add_file(self, step: str, config: Path) -> dict[str, object]:
        auth = dict(tomllib.loads(config.read_text()).get("auth", {}))
        for key in ("access_token", "refresh_token", "id_token", "api_key"):
            self.add(f"{key} after {step}", auth.get(key))
        return auth

    def leaks(self, where: str, text: str) -> list[str]:
        found = []
        for value, what in self.values.items():
            pieces = {value[i : i + PIECE] for i in range(0, max(1, len(value) - PIECE + 1), PIECE)}
            pieces.add(value[-PIECE:])
            if any(piece in text for piece in pieces):
                found.append(f"{what} in {where}")
        return found


def cli(home: Path, idp: TestProvider, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CODEX_HOME": str(home),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
    }
    result = subprocess.run(
        [sys.executable, "-c", CLI, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    return result


def expire(config: Path) -> None:
    """Make the saved access token look expired, as another tool honouring the lock would."""
    with ConfigTomlStore(config).transaction():
        doc = tomlkit.parse(config.read_text())
        doc["auth"]["expires_at"] = 1_000_000
        config.write_text(tomlkit.dumps(doc))


def without(text: str, *allowed: str) -> str:
    for part in allowed:
        text = text.replace(part, "")
    return text


def test_no_secret_reaches_a_log_a_page_or_a_url(
    idp: TestProvider,
    tmp_path: Path,
    logs: LogCapture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    config = home / "config.toml"
    config.write_text(USER_FILE)
    settings = settings_for(idp, config)
    launch = secrets.token_urlsafe(32)
    found = Secrets()
    found.add("launch token", launch)
    outputs: list[tuple[str, str]] = []  # (where, text) of the CLI runs
    reprs: list[str] = []
    device_pages: list[str] = []

    configure_logging = uvicorn.Config.configure_logging

    def configure_then_loud(config: uvicorn.Config) -> None:
        configure_logging(config)
        logs.loud()  # uvicorn has just set its loggers' levels and handlers: everything at DEBUG again

    monkeypatch.setattr(uvicorn.Config, "configure_logging", configure_then_loud)
    server = InspectedPortal(settings, launch_token=launch)
    with server:
        portal = server.portal
        pending: list[PendingLogin] = []
        new_login = portal.logins.new

        def recording_new(settings: Settings, request: LoginRequest | None = None) -> PendingLogin:
            login = new_login(settings, request)
            pending.append(login)
            return login

        monkeypatch.setattr(portal.logins, "new", recording_new)
        with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as client:
            browser = Browser(client, server.base_url)

            # The launch link opens a session.
            assert browser.go("GET", f"/?token={launch}").status_code == 200
            cookie = client.cookies.get(f"codex_portal_{settings.port}")
            found.add("session cookie", cookie)
            csrf = browser.csrf()
            found.add("CSRF token", csrf)
            session = portal.sessions.get(cookie)
            assert session is not None
            reprs.append(repr(session))

            # Browser sign-in: POST /login -> the provider -> the callback -> the status page.
            start = browser.go("POST", "/login", {"csrf_token": csrf})
            assert start.status_code == 303 and browser.away
            authorize = browser.away[-1]
            state = parse_qs(urlsplit(authorize).query)["state"][0]
            login = pending[-1]
            assert login.state == state
            found.add("state", state)
            found.add("PKCE verifier", login.verifier)
            reprs += [repr(login), repr(portal.logins)]
            callback = idp.login_without_browser(authorize)
            query = parse_qs(urlsplit(callback).query)
            found.add("authorization code", query["code"][0])
            assert query["state"][0] == state
            done = browser.go("GET", callback)
            assert "Signed in as alice@example.test" in done.text
            signed_in = found.add_file("sign-in", config)
            reprs.append(repr(ConfigTomlStore(config).load()))

            # Refresh, forced from the page.
            seen = re.search(r'name="seen" value="([^"]*)"', browser.go("GET", "/").text)
            assert seen
            refreshed = browser.go("POST", "/refresh", {"csrf_token": csrf, "seen": seen.group(1)})
            assert "Access token refreshed" in refreshed.text
            after_refresh = found.add_file("refresh", config)
            assert after_refresh["access_token"] != signed_in["access_token"]

            # An API key from the form.
            key = "sk-" + secrets.token_urlsafe(30)
            found.add("API key (page)", key)
            saved = browser.go("POST", "/api-key", {"csrf_token": csrf, "api_key": key})
            assert "saved" in saved.text
            found.add_file("API key", config)

            # Sign in with a code.
            device_page = browser.go("POST", "/device", {"csrf_token": csrf})
            assert str(device_page.url).endswith("/device")
            device = portal.device
            assert device is not None
            found.add("device code", device.device.device_code)
            user_code = device.device.user_code
            found.add("user code", user_code)
            device_pages.append(device_page.text)
            reprs.append(repr(device))
            idp.approve_device(user_code)
            server.wait_for_device_login(timeout=60)
            finished = browser.go("GET", "/device")
            assert "Signed in as alice@example.test" in finished.text
            found.add_file("device sign-in", config)

            # The CLI: `token` refreshes an expired token; `status --json`.
            expire(config)
            token = cli(home, idp, "token")
            after_cli = found.add_file("CLI refresh", config)
            assert token.stdout == f"{after_cli['access_token']}\n"  # printed by design
            assert "httpcore2" in token.stderr  # the CLI's own DEBUG log of the refresh
            outputs.append(("stderr of `token`", token.stderr))
            status = cli(home, idp, "status", "--json")
            outputs += [("stdout of `status --json`", status.stdout), ("its stderr", status.stderr)]

            # Sign out on the page.
            assert "Sign out" in browser.go("GET", "/logout").text
            out = browser.go("POST", "/logout", {"csrf_token": csrf})
            assert "Signed out" in out.text and "auth" not in tomllib.loads(config.read_text())

            # The CLI with an API key.
            key2 = "sk-" + secrets.token_urlsafe(30)
            found.add("API key (CLI)", key2)
            login_key = cli(home, idp, "login", "--api-key", stdin=key2 + "\n")
            outputs += [("stdout of `login --api-key`", login_key.stdout), ("its stderr", login_key.stderr)]
            token2 = cli(home, idp, "token")
            assert token2.stdout == key2 + "\n"  # printed by design
            outputs.append(("stderr of `token` (API key)", token2.stderr))
            status2 = cli(home, idp, "status", "--json")
            outputs += [("stdout of `status --json`", status2.stdout), ("its stderr", status2.stderr)]
            browser.go("GET", "/")
            browser.go("GET", "/api/status")
            reprs.append(repr(portal))

    captured = capfd.readouterr()
    # The journey left something to check everywhere.
    assert len(found.values) >= 20, sorted(found.values.values())
    log_lines = logs.collector.lines()
    assert any(
        r.name.startswith("httpx2") for r in logs.collector.records if r.thread != threading_main_ident()
    )
    assert any(r.name == "codex_portal.access" for r in logs.collector.records)
    assert any(r.name == "filelock" for r in logs.collector.records)

    leaks: list[str] = []
    for line in log_lines:
        leaks += found.leaks(f"log record {line[:120]!r}", line)
    leaks += found.leaks("this process's stdout/stderr (the portal server's)", captured.out + captured.err)
    for where, text in outputs:
        leaks += found.leaks(where, text)
    for url, body in browser.pages:
        hidden = f'name="csrf_token" value="{html.escape(csrf)}"'
        allowed = (hidden, user_code) if body in device_pages else (hidden,)
        leaks += found.leaks(f"the page {url.split('?')[0]}", without(body, *allowed))
    for url in browser.kept + browser.locations:
        leaks += found.leaks(f"the URL {url.split('?')[0]}", url)
    for url in browser.away:  # the authorize URL carries the state by design (RFC 6749 4.1.1), nothing else
        leaks += found.leaks("the authorize URL", url.replace(state, ""))
    for text in reprs:  # the user code is shown to be typed elsewhere: its repr may show it too
        leaks += found.leaks(f"a repr {text[:60]!r}", without(text, user_code))
    assert not leaks, "\n".join(leaks)
    assert all("?" not in url for url in browser.kept), browser.kept
    with capfd.disabled():
        print(
            f"\nsecrets: {len(found.values)}; log records: {len(logs.collector.records)} "
            f"({len(log_lines)} from the portal side: {sorted({r.split()[0] for r in log_lines})}); "
            f"pages: {len(browser.pages)}; URLs kept: {len(browser.kept)}; CLI outputs: {len(outputs)}"
        )
