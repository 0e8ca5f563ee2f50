"""The portal against a provider that misbehaves (tests/faulty_idp.py, a real server on loopback).

For every fault, on every path that talks to the provider (browser sign-in and its callback, sign-in
with a code, refresh, `codex-portal token`, sign-out): the person gets one clear line (no traceback,
no secret, none of the provider's markup), the config file is not touched (same bytes, same inode:
not even rewritten), the portal answers within its timeout + 1 s, and it answers other requests at
once while a provider call hangs. Forged ID tokens are refused. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx2
import pytest

from tests.conftest import free_port
from tests.faulty_idp import DEVICE_GRANT, EMAIL, MARKER, SPOOFED_EMAIL, FaultyProvider, Seen
from tests.portal import PortalServer, page_csrf
from tests.support import FakeTime
from webapp import cli
from webapp.accounts import Account
from webapp.credentials import Credentials
from webapp.device import DeviceAuthorization, poll_device_token, start_device_flow
from webapp.errors import DeviceFlowError, PortalError, SessionExpired
from webapp.provider import Provider
from webapp.settings import Settings

TIMEOUT = 1.0  # the portal's timeout for each provider call
REVOKE_TIMEOUT = 0.5
BOUND = TIMEOUT + 1.0  # the portal answers within this, whatever the provider does
PROMPT = 0.5  # "at once": another request is answered within this while a provider call hangs
LAUNCH = "faulty-launch-token-" + "q" * 24
USER_FILE = '# my settings\nmodel = "o3"\n\n[tools]\nweb_search = true  # keep me\n'
FAR = 4_000_000_000  # an access token that does not need refreshing
NOTICE = re.compile(r'<p class="notice notice-(\w+)" role="(?:status|alert)">(.*?)</p>', re.S)
USER_CODE = re.compile(r'id="user-code"[^>]*>([^<]+)<')
PROVIDER_MARKUP = ("<script>alert(", "<img src=x", f"<h1>{MARKER}")
T = TypeVar("T")


# ---- the rig: the fake provider, a portal whose issuer it is, a browser with a session ------------
@dataclass(frozen=True)
class Snapshot:
    data: bytes
    inode: int
    mtime_ns: int


def _snapshot(path: Path) -> Snapshot:
    stat = path.stat()
    return Snapshot(path.read_bytes(), stat.st_ino, stat.st_mtime_ns)


def _signed_in_file(fake: FaultyProvider, path: Path, *, expires_at: int = FAR) -> dict[str, str]:
    """A config file holding a sign-in at the fake, as the portal would have saved it."""
    old = {
        "access_token": "old-access-" + "a" * 20,
        "refresh_token": fake.issue_refresh_token(),
        "id_token": fake.id_token(nonce=None),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        USER_FILE + "\n[auth]\n"
        f'access_token = "{old["access_token"]}"\n'
        f'refresh_token = "{old["refresh_token"]}"\n'
        f"expires_at = {expires_at}\n"
        f'id_token = "{old["id_token"]}"\n'
        f'issuer = "{fake.issuer}"\n'
        f'client_id = "{fake.client_id}"\n'
    )
    path.chmod(0o600)
    return old


def _settings(fake: FaultyProvider, path: Path) -> Settings:
    return Settings(
        config_path=path,
        issuer=fake.issuer,
        client_id=fake.client_id,
        port=free_port(),
        open_browser=False,
        timeout=TIMEOUT,
        revoke_timeout=REVOKE_TIMEOUT,
    )


@dataclass
class Rig:
    fake: FaultyProvider
    settings: Settings
    server: PortalServer
    browser: httpx2.Client
    old: dict[str, str] = field(default_factory=dict)  # the sign-in saved before the test
    mark: int = 0  # how many requests the fake had seen when the test began

    @property
    def path(self) -> Path:
        return self.settings.config_path

    def reset(self) -> None:
        """A well-behaved provider again, and a fresh saved sign-in."""
        self.fake.faults.clear()
        self.fake.id_token_fault = None
        self.fake.device_interval = 0.05
        self.browser.post("/device/cancel", data={"csrf_token": page_csrf(self.browser)})
        self.old = _signed_in_file(self.fake, self.path)
        self.page()  # drops what an earlier test left to show
        self.mark = len(self.fake.requests())

    def requests(self, endpoint: str) -> list[Seen]:
        """The requests to `endpoint` since the test began."""
        return [seen for seen in self.fake.requests()[self.mark :] if seen.endpoint == endpoint]

    def wait_for(self, endpoint: str, count: int, timeout: float) -> bool:
        """True once `count` requests to `endpoint` have arrived since the test began."""
        earlier = sum(1 for seen in self.fake.requests()[: self.mark] if seen.endpoint == endpoint)
        return self.fake.wait_for(endpoint, earlier + count, timeout=timeout)

    def page(self) -> tuple[str, list[tuple[str, str]]]:
        """The status page (raw HTML) and its notices, unescaped."""
        response = self.browser.get("/")
        assert response.status_code == 200, response.text
        return response.text, [(kind, html.unescape(text)) for kind, text in NOTICE.findall(response.text)]

    def start_sign_in(self) -> str:
        start = self.browser.post("/login", data={"csrf_token": page_csrf(self.browser)})
        assert start.status_code == 303, start.text
        location = start.headers["location"]
        assert location.startswith(self.fake.url("/authorize?"))
        return location

    def secrets(self) -> list[str]:
        """Everything that must never be shown: what the fake issued, the portal's own secrets."""
        sent = [
            value
            for seen in self.fake.requests()
            for name, value in {**seen.form, **seen.query}.items()
            if name in ("code", "code_verifier", "state", "refresh_token", "device_code", "token", "nonce")
        ]
        cookies = [str(value) for value in self.browser.cookies.values()]
        return [*self.fake.issued, *self.old.values(), *sent, *cookies, LAUNCH]


@contextlib.contextmanager
def _open_rig(fake: FaultyProvider, home: Path) -> Iterator[Rig]:
    settings = _settings(fake, home / "config.toml")
    old = _signed_in_file(fake, settings.config_path)
    with (
        PortalServer(settings, launch_token=LAUNCH) as server,
        httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as browser,
    ):
        assert browser.get(server.launch_url).status_code == 303
        rig = Rig(fake, settings, server, browser, old)
        fake.device_interval = 0.05
        yield rig


@pytest.fixture
def fake() -> Iterator[FaultyProvider]:
    provider = FaultyProvider()
    with provider:
        yield provider
    assert provider.active_handlers == 0
    assert provider.errors == []


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One provider and one portal for the faults that do not touch discovery or the key set (the
    portal caches both, so those need a fresh provider each: see `fresh`)."""
    provider = FaultyProvider()
    with provider, _open_rig(provider, tmp_path_factory.mktemp("shared")) as rig:
        yield rig
    assert provider.active_handlers == 0
    assert provider.errors == []


@pytest.fixture
def rig(shared: Rig) -> Iterator[Rig]:
    shared.reset()
    yield shared
    assert shared.fake.errors == []


@pytest.fixture
def fresh(fake: FaultyProvider, tmp_path: Path) -> Iterator[Callable[[], Rig]]:
    """A portal started on demand, so that a test can break the provider before the portal meets it."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(_open_rig(fake, tmp_path))


# ---- what every failure must look like -------------------------------------------------------------
def _assert_clear_line(message: str, raw: str, rig: Rig, *, extra_secrets: Iterable[str] = ()) -> None:
    """One printable line, no traceback, no secret, none of the provider's markup in the raw page."""
    assert message.strip(), raw
    assert message.isprintable(), repr(message)  # no line break, no terminal escape
    assert len(message) <= 600, message
    assert "Traceback" not in message and "HTTPStatusError(" not in message
    for markup in PROVIDER_MARKUP:
        assert markup not in raw, f"the provider's markup {markup!r} is in the page"
    for secret in [*rig.secrets(), *extra_secrets]:
        assert secret not in raw, "a secret is in the page"


def _assert_untouched(rig: Rig, before: Snapshot) -> None:
    assert _snapshot(rig.path) == before, "the config file was written"
    assert rig.requests("stolen") == [], "a redirect was followed"


def _only_error(notices: list[tuple[str, str]], prefix: str) -> str:
    assert len(notices) == 1 and notices[0][0] == "error", notices
    assert notices[0][1].startswith(prefix), notices
    return notices[0][1]


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    began = time.monotonic()
    result = call()
    return result, time.monotonic() - began


def _while_hanging(rig: Rig, endpoint: str, call: Callable[[], T]) -> tuple[T, float]:
    """Run `call` (which makes the portal wait on `endpoint`) in a thread; while the portal waits,
    another request must be answered at once. Returns what `call` returned and how long it took."""
    before = len(rig.fake.requests(endpoint))
    outcome: list[tuple[T, float]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(_timed(call))
        except BaseException as exc:  # re-raised below, in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert rig.fake.wait_for(endpoint, before + 1, timeout=BOUND), f"the portal never called {endpoint}"
        with httpx2.Client(base_url=rig.server.base_url, cookies=rig.browser.cookies, timeout=5) as other:
            probe, took = _timed(lambda: other.get("/"))
        assert probe.status_code == 200 and took < PROMPT, f"the portal took {took:.2f} s to answer /"
    finally:
        thread.join(BOUND + 15)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return outcome[0]


# ---- the fake works: without faults, every flow succeeds (so each failure below is the fault's) ----
def test_every_flow_works_when_nothing_is_wrong(fresh: Callable[[], Rig]) -> None:
    rig = fresh()
    callback = rig.fake.authorize(rig.start_sign_in())
    response, took = _timed(lambda: rig.browser.get(callback))
    assert response.status_code == 303 and response.headers["location"] == "/" and took < BOUND
    raw, notices = rig.page()
    assert notices == [("success", f"Signed in as {EMAIL}. The Codex CLI will use this account.")]
    auth = tomllib.loads(rig.path.read_text())["auth"]
    assert auth["access_token"] in rig.fake.issued and auth["issuer"] == rig.fake.issuer
    assert not rig.fake.refresh_token_valid(rig.old["refresh_token"])  # the replaced one was revoked
    assert rig.path.read_text().startswith(USER_FILE)

    rig.fake.device_interval = 0.05
    start = rig.browser.post("/device", data={"csrf_token": page_csrf(rig.browser)})
    assert start.status_code == 303 and start.headers["location"] == "/device"
    rig.fake.approve_device(_user_code(rig))
    assert _device_outcome(rig) == "success"
    assert tomllib.loads(rig.path.read_text())["auth"]["access_token"] != auth["access_token"]

    creds = _fresh(rig.settings, force=True)
    assert creds.access_token in rig.fake.issued and rig.fake.grants("refresh_token") == 1

    out = rig.browser.post("/logout", data={"csrf_token": page_csrf(rig.browser)})
    assert out.status_code == 303
    assert rig.page()[1][-1] == ("success", "Signed out. The credentials were removed from the config file.")
    assert rig.path.read_text() == USER_FILE
    assert not rig.fake.refresh_token_valid(str(creds.refresh_token))


def _fresh(settings: Settings, force: bool = False) -> Credentials:
    """What `codex-portal token` (or, forced, the Refresh button) does."""
    account = Account(settings)
    return account.run(account.refresh(force=force))


def test_the_fake_stops_cleanly_while_an_answer_hangs() -> None:
    with FaultyProvider(hang_seconds=30) as fake:
        fake.fail("token", "hang")
        with httpx2.Client(timeout=0.2) as client, pytest.raises(httpx2.ReadTimeout):
            client.post(fake.url("/token"), data={"grant_type": "x"})
        assert fake.active_handlers == 1  # still hanging after the client gave up
        _, took = _timed(fake.stop)
    assert took < 1.0 and fake.active_handlers == 0 and fake.errors == []


# ---- browser sign-in: the token endpoint ---------------------------------------------------------
TOKEN_FAULTS = [
    "500_html",
    "garbage_200",
    "json_array",
    "truncated_json",
    "no_access_token",
    "token_type_mac",
    "invalid_grant",
    "error_markup",
    "redirect_302",
    "hang",
    "trickle",
    "redirect_302_with_token",
    "error_control_chars",
]


@pytest.mark.parametrize("mode", TOKEN_FAULTS)
def test_sign_in_survives_a_broken_token_endpoint(rig: Rig, mode: str) -> None:
    callback = rig.fake.authorize(rig.start_sign_in())
    before = _snapshot(rig.path)
    rig.fake.fail("token", mode)
    if mode in ("hang", "trickle"):
        response, took = _while_hanging(rig, "token", lambda: rig.browser.get(callback))
    else:
        response, took = _timed(lambda: rig.browser.get(callback))
    assert took < BOUND, f"the callback took {took:.2f} s"
    assert response.status_code == 303 and response.headers["location"] == "/"
    raw, notices = rig.page()
    message = _only_error(notices, "Sign-in failed: ")
    _assert_clear_line(message, raw, rig)
    if mode in ("500_html", "garbage_200", "json_array"):
        assert MARKER not in raw  # the provider's page is not echoed, escaped or not
    _assert_untouched(rig, before)
    assert rig.requests("revoke") == []  # the old sign-in stays, unrevoked
    assert rig.fake.refresh_token_valid(rig.old["refresh_token"])


def test_an_http_error_of_the_token_endpoint_names_its_status(rig: Rig) -> None:
    callback = rig.fake.authorize(rig.start_sign_in())
    rig.fake.fail("token", "500_html")
    rig.browser.get(callback)
    message = _only_error(rig.page()[1], "Sign-in failed: ")
    assert "HTTP 500" in message, message


# ---- browser sign-in: forged ID tokens -------------------------------------------------------------
ID_TOKEN_FAULTS = [
    ("bad_signature", "could not be verified"),
    ("unpublished_key", "could not be verified"),
    ("spoofed_email", "could not be verified"),
    ("alg_none", "could not be verified"),
    ("hs256_public_key", "could not be verified"),
    ("malformed", "could not be verified"),
    ("wrong_aud", "not valid for this sign-in"),
    ("wrong_iss", "not valid for this sign-in"),
    ("wrong_nonce", "not valid for this sign-in"),
    ("missing_nonce", "not valid for this sign-in"),
    ("expired", "not valid for this sign-in"),
    ("missing_exp", "not valid for this sign-in"),
]


@pytest.mark.parametrize(("fault", "says"), ID_TOKEN_FAULTS)
def test_sign_in_refuses_a_forged_id_token(rig: Rig, fault: str, says: str) -> None:
    callback = rig.fake.authorize(rig.start_sign_in())
    before = _snapshot(rig.path)
    jwks_before = len(rig.requests("jwks"))
    rig.fake.id_token_fault = fault
    response, took = _timed(lambda: rig.browser.get(callback))
    assert took < BOUND and response.status_code == 303
    raw, notices = rig.page()
    message = _only_error(notices, "Sign-in failed: the provider's ID token ")
    assert says in message
    _assert_clear_line(message, raw, rig)
    assert SPOOFED_EMAIL not in raw
    _assert_untouched(rig, before)
    assert rig.requests("revoke") == []
    assert len(rig.requests("jwks")) - jwks_before <= 1  # one refetch for an unknown key, no loop


# ---- browser sign-in: the key set (the portal caches it: a fresh provider for each) ----------------
@pytest.mark.parametrize(
    "mode", ["500_html", "garbage_200", "json_array", "redirect_302", "unknown_kid", "no_keys", "hang"]
)
def test_sign_in_survives_a_broken_key_set(fresh: Callable[[], Rig], mode: str) -> None:
    rig = fresh()
    callback = rig.fake.authorize(rig.start_sign_in())
    before = _snapshot(rig.path)
    rig.fake.fail("jwks", mode)
    if mode == "hang":
        response, took = _while_hanging(rig, "jwks", lambda: rig.browser.get(callback))
    else:
        response, took = _timed(lambda: rig.browser.get(callback))
    assert took < BOUND, f"the callback took {took:.2f} s"
    assert response.status_code == 303
    raw, notices = rig.page()
    _assert_clear_line(_only_error(notices, "Sign-in failed: "), raw, rig)
    assert MARKER not in raw
    _assert_untouched(rig, before)
    assert len(rig.requests("jwks")) <= 2


# ---- discovery (the portal caches a good document: a fresh provider, broken before the portal starts)
DISCOVERY_FAULTS = [
    "500_html",
    "garbage_200",
    "json_array",
    "invalid_json",
    "truncated_json",
    "missing_endpoints",
    "other_issuer",
    "foreign_http_endpoints",
    "too_large",
    "redirect_302",
]


@pytest.mark.parametrize("mode", DISCOVERY_FAULTS)
def test_sign_in_start_survives_a_broken_discovery_document(
    fake: FaultyProvider, fresh: Callable[[], Rig], mode: str
) -> None:
    fake.fail("discovery", mode)
    rig = fresh()
    before = _snapshot(rig.path)
    response, took = _timed(lambda: rig.browser.post("/login", data={"csrf_token": page_csrf(rig.browser)}))
    assert took < BOUND, f"POST /login took {took:.2f} s"
    assert response.status_code == 502
    notices = [(kind, html.unescape(text)) for kind, text in NOTICE.findall(response.text)]
    message = _only_error(notices, "")
    _assert_clear_line(message, response.text, rig)
    assert MARKER not in response.text
    _assert_untouched(rig, before)
    assert {seen.endpoint for seen in fake.requests()} == {"discovery"}
    if mode == "foreign_http_endpoints":  # refused for what it is, before anything is sent there
        assert "must be an https URL" in message


@pytest.mark.parametrize("mode", ["500_html", "json_array", "other_issuer", "foreign_http_endpoints"])
def test_device_start_survives_a_broken_discovery_document(
    fake: FaultyProvider, fresh: Callable[[], Rig], mode: str
) -> None:
    fake.fail("discovery", mode)
    rig = fresh()
    before = _snapshot(rig.path)
    response, took = _timed(lambda: rig.browser.post("/device", data={"csrf_token": page_csrf(rig.browser)}))
    assert took < BOUND and response.status_code == 502
    notices = [(kind, html.unescape(text)) for kind, text in NOTICE.findall(response.text)]
    message = _only_error(notices, "")
    _assert_clear_line(message, response.text, rig)
    _assert_untouched(rig, before)
    assert rig.browser.get("/api/device").json() == {"state": "none"}
    if mode == "foreign_http_endpoints":
        assert "must be an https URL" in message


# ---- sign-in with a code: the device endpoint, polling, and what comes back ----------------------
DEVICE_FAULTS = [
    "500_html",
    "garbage_200",
    "json_array",
    "redirect_302",
    "missing_user_code",
    "javascript_uri",
    "error_markup",
    "hang",
    "error_control_chars",
]


@pytest.mark.parametrize("mode", DEVICE_FAULTS)
def test_device_start_survives_a_broken_device_endpoint(rig: Rig, mode: str) -> None:
    before = _snapshot(rig.path)
    rig.fake.fail("device", mode)

    def start() -> httpx2.Response:
        return rig.browser.post("/device", data={"csrf_token": page_csrf(rig.browser)})

    if mode in ("hang", "trickle"):
        response, took = _while_hanging(rig, "device", start)
    else:
        response, took = _timed(start)
    assert took < BOUND, f"POST /device took {took:.2f} s"
    assert response.status_code in (400, 502), response.status_code
    notices = [(kind, html.unescape(text)) for kind, text in NOTICE.findall(response.text)]
    message = _only_error(notices, "")
    _assert_clear_line(message, response.text, rig)
    if mode == "javascript_uri":
        assert 'href="javascript:' not in response.text
    _assert_untouched(rig, before)
    assert rig.browser.get("/api/device").json() == {"state": "none"}
    assert rig.requests("token") == []


def _user_code(rig: Rig) -> str:
    match = USER_CODE.search(rig.browser.get("/device").text)
    assert match, "no user code on /device"
    return match.group(1).strip()


def _device_outcome(rig: Rig, within: float = 10.0) -> str:
    """The state /api/device reaches once the portal has stopped polling."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = str(rig.browser.get("/api/device").json()["state"])
        if state != "pending":
            return state
        time.sleep(0.05)
    raise AssertionError("the sign-in with a code was still pending")


@pytest.mark.parametrize(
    "fault",
    [
        "bad_signature",
        "unpublished_key",
        "spoofed_email",
        "alg_none",
        "hs256_public_key",
        "wrong_aud",
        "wrong_iss",
        "expired",
        "missing_exp",
    ],
)
def test_device_sign_in_refuses_a_forged_id_token(rig: Rig, fault: str) -> None:
    before = _snapshot(rig.path)
    start = rig.browser.post("/device", data={"csrf_token": page_csrf(rig.browser)})
    assert start.status_code == 303
    rig.fake.id_token_fault = fault
    rig.fake.approve_device(_user_code(rig))
    assert _device_outcome(rig) == "error"
    assert rig.fake.grants(DEVICE_GRANT) >= 1
    assert rig.browser.get("/device").status_code == 303  # ends on the status page, with the outcome
    raw, notices = rig.page()
    message = _only_error(notices, "Sign-in with a code failed: the provider's ID token ")
    _assert_clear_line(message, raw, rig)
    assert SPOOFED_EMAIL not in raw
    _assert_untouched(rig, before)


def test_device_polling_slows_down_when_told_and_the_portal_stays_responsive(rig: Rig) -> None:
    before = _snapshot(rig.path)
    rig.fake.fail("token", "slow_down")
    start = rig.browser.post("/device", data={"csrf_token": page_csrf(rig.browser)})
    assert start.status_code == 303
    assert rig.wait_for("token", 1, timeout=5)  # the first poll, after the provider's 0.05 s
    # slow_down adds 5 s to the interval: no second poll comes soon, and the portal answers meanwhile.
    assert not rig.wait_for("token", 2, timeout=1.0)
    _, took = _timed(lambda: rig.page())
    assert took < PROMPT
    assert rig.browser.get("/api/device").json()["state"] == "pending"
    rig.browser.post("/device/cancel", data={"csrf_token": page_csrf(rig.browser)})
    _assert_untouched(rig, before)


async def _device(fake: FaultyProvider) -> tuple[Provider, DeviceAuthorization]:
    provider = Provider(fake.issuer, timeout=TIMEOUT)
    device = await start_device_flow(provider, client_id=fake.client_id, scope="openid")
    return provider, device


def _poll(fake: FaultyProvider, on_sleep: Callable[[int], None] = lambda n: None) -> tuple[object, FakeTime]:
    async def run() -> tuple[object, FakeTime]:
        provider, device = await _device(fake)
        time_ = FakeTime(device.started, on_sleep)
        try:
            result: object = await poll_device_token(
                provider, device, client_id=fake.client_id, sleep=time_.sleep, clock=time_.clock
            )
        except PortalError as exc:
            result = exc
        finally:
            await provider.aclose()
        return result, time_

    return asyncio.run(run())


def test_a_slow_down_storm_stretches_the_interval_until_the_code_expires(fake: FaultyProvider) -> None:
    fake.device_interval = 5
    fake.device_expires_in = 600
    fake.fail("token", "slow_down")
    result, time_ = _poll(fake)
    assert isinstance(result, DeviceFlowError) and result.error == "expired_token"
    polls = fake.requests("token")
    assert len(polls) == len(time_.sleeps)  # one poll after each wait, never two in a row
    assert time_.sleeps == [5.0 * n for n in range(1, len(time_.sleeps) + 1)]  # +5 s per slow_down
    assert sum(time_.sleeps) <= 600 and len(polls) <= 15


def test_after_a_slow_down_storm_the_interval_stays_long_and_the_sign_in_completes(
    fake: FaultyProvider,
) -> None:
    fake.device_interval = 5
    fake.fail("token", "slow_down")

    def on_sleep(count: int) -> None:
        if count == 3:
            fake.fail("token", None)  # the storm ends; the person has not finished yet
        if count == 5:
            fake.approve_device(fake.user_codes()[-1])

    result, time_ = _poll(fake, on_sleep)
    assert not isinstance(result, PortalError), result
    # Two slow_downs (5 -> 15 s), then authorization_pending: the longer interval stays.
    assert time_.sleeps == [5.0, 10.0, 15.0, 15.0, 15.0]


def test_device_polling_backs_off_while_the_token_endpoint_fails(fake: FaultyProvider) -> None:
    fake.device_interval = 5
    fake.fail("token", "500_html")
    result, time_ = _poll(fake)
    assert isinstance(result, DeviceFlowError) and result.error == "expired_token"
    assert time_.sleeps[:5] == [5.0, 10.0, 20.0, 40.0, 60.0] and max(time_.sleeps) == 60.0
    assert len(fake.requests("token")) == len(time_.sleeps) <= 15


# ---- refresh (`codex-portal token` and the Refresh button share ensure_fresh) ----------------------
REFRESH_FAULTS = [
    ("token", "500_html"),
    ("token", "garbage_200"),
    ("token", "json_array"),
    ("token", "truncated_json"),
    ("token", "no_access_token"),
    ("token", "token_type_mac"),
    ("token", "error_markup"),
    ("token", "redirect_302"),
    ("token", "hang"),
    ("discovery", "500_html"),
    ("discovery", "json_array"),
    ("discovery", "other_issuer"),
    ("discovery", "foreign_http_endpoints"),
    ("discovery", "missing_endpoints"),
    ("token", "trickle"),
    ("token", "redirect_302_with_token"),
    ("token", "error_control_chars"),
    ("discovery", "hang"),
]


@dataclass
class Offline:
    """A config file with an expired sign-in at the fake, without a portal (as `codex-portal token`)."""

    fake: FaultyProvider
    settings: Settings
    old: dict[str, str]

    @property
    def path(self) -> Path:
        return self.settings.config_path

    def secrets(self) -> list[str]:
        return [*self.fake.issued, *self.old.values()]


@pytest.fixture
def offline(fake: FaultyProvider, tmp_path: Path) -> Offline:
    settings = _settings(fake, tmp_path / "codex" / "config.toml")
    return Offline(fake, settings, _signed_in_file(fake, settings.config_path, expires_at=1_000_000))


def _assert_clear_error(message: str, secrets: Iterable[str], *, mode: str) -> None:
    """For the terminal: one printable line (no line break, no escape sequence), no secret."""
    assert message.strip() and message.isprintable(), repr(message)
    assert "Traceback" not in message and len(message) <= 600
    if mode != "error_markup":  # that fault's text is the provider's error description, shown as text
        assert MARKER not in message
    for secret in secrets:
        assert secret not in message, "a secret is in the message"


@pytest.mark.parametrize(("endpoint", "mode"), REFRESH_FAULTS)
def test_refresh_survives_a_broken_provider(offline: Offline, endpoint: str, mode: str) -> None:
    before = _snapshot(offline.path)
    offline.fake.fail(endpoint, mode)
    began = time.monotonic()
    with pytest.raises(PortalError) as caught:
        _fresh(offline.settings)
    took = time.monotonic() - began
    assert took < BOUND, f"the refresh took {took:.2f} s"
    assert not isinstance(caught.value, SessionExpired)  # the saved tokens stay usable later
    _assert_clear_error(caught.value.message, offline.secrets(), mode=mode)
    if mode == "foreign_http_endpoints":  # refused for what it is, before anything is sent there
        assert "must be an https URL" in caught.value.message
    assert _snapshot(offline.path) == before, "the config file was written"
    assert offline.fake.requests("stolen") == []


def test_a_refused_refresh_forgets_the_refresh_token_once(offline: Offline) -> None:
    before = tomllib.loads(offline.path.read_text())
    offline.fake.fail("token", "invalid_grant")
    with pytest.raises(SessionExpired) as caught:
        _fresh(offline.settings)
    assert caught.value.message == "session expired, sign in again"
    after = tomllib.loads(offline.path.read_text())
    assert "refresh_token" not in after["auth"]
    del before["auth"]["refresh_token"]
    assert after == before and offline.path.read_text().startswith(USER_FILE)
    polls = len(offline.fake.requests("token"))
    with pytest.raises(SessionExpired):  # no loop: the dead token is not tried again
        _fresh(offline.settings)
    assert len(offline.fake.requests("token")) == polls


@pytest.mark.parametrize("mode", ["500_html", "garbage_200", "redirect_302", "hang"])
def test_the_refresh_button_survives_a_broken_token_endpoint(rig: Rig, mode: str) -> None:
    before = _snapshot(rig.path)
    rig.fake.fail("token", mode)

    def refresh() -> httpx2.Response:
        return rig.browser.post("/refresh", data={"csrf_token": page_csrf(rig.browser)})

    if mode == "hang":
        response, took = _while_hanging(rig, "token", refresh)
    else:
        response, took = _timed(refresh)
    assert took < BOUND, f"POST /refresh took {took:.2f} s"
    assert response.status_code == 303 and response.headers["location"] == "/"
    raw, notices = rig.page()
    message = _only_error(notices, "Could not refresh: ")
    assert message.endswith("the saved tokens were kept.")
    _assert_clear_line(message, raw, rig)
    _assert_untouched(rig, before)


def test_refresh_does_not_save_an_unverified_id_token(offline: Offline) -> None:
    offline.fake.id_token_on_refresh = True
    offline.fake.refresh_id_token_fault = "spoofed_email"
    with contextlib.suppress(PortalError):
        _fresh(offline.settings)
    creds = Account(offline.settings).load()
    assert creds is not None and creds.email == EMAIL, creds.email if creds else None


# ---- the CLI: one line on stderr, exit 1 ---------------------------------------------------------
@pytest.fixture
def cli_env(offline: Offline, monkeypatch: pytest.MonkeyPatch) -> Offline:
    monkeypatch.setenv("CODEX_HOME", str(offline.path.parent))
    for name in ("CODEX_PORTAL_ISSUER", "CODEX_PORTAL_CLIENT_ID", "CODEX_PORTAL_SCOPE", "CODEX_PORTAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    return offline


@pytest.mark.parametrize(
    ("endpoint", "mode"),
    [
        ("token", "500_html"),
        ("token", "garbage_200"),
        ("token", "no_access_token"),
        ("token", "redirect_302"),
        ("token", "error_markup"),
        ("discovery", "json_array"),
        ("token", "error_control_chars"),
    ],
)
def test_codex_portal_token_says_one_line(
    cli_env: Offline, capsys: pytest.CaptureFixture[str], endpoint: str, mode: str
) -> None:
    before = _snapshot(cli_env.path)
    cli_env.fake.fail(endpoint, mode)
    code = cli.main(["token"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("Error: "), repr(err)
    _assert_clear_error(err.removesuffix("\n"), cli_env.secrets(), mode=mode)
    assert _snapshot(cli_env.path) == before


@pytest.mark.parametrize(
    "mode",
    ["500_html", "error_markup", "javascript_uri", "error_control_chars"],
)
def test_codex_portal_login_device_says_one_line(
    cli_env: Offline, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    before = _snapshot(cli_env.path)
    cli_env.fake.fail("device", mode)
    fake = cli_env.fake
    fake.device_expires_in = 1  # were the start to succeed, polling would end at once, not in 10 min
    code = cli.main(["login", "--device", "--issuer", fake.issuer, "--client-id", fake.client_id])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("Error: "), repr(err)
    _assert_clear_error(err.removesuffix("\n"), cli_env.secrets(), mode=mode)
    assert _snapshot(cli_env.path) == before


def test_codex_portal_logout_when_revocation_fails(
    cli_env: Offline, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env.fake.fail("revoke", "500_html")
    assert cli.main(["logout"]) == 0
    out, err = capsys.readouterr()
    assert err == "Signed out. The provider could not be reached to revoke the refresh token.\n"
    assert cli_env.path.read_text() == USER_FILE


# ---- sign-out: revocation down or hanging --------------------------------------------------------
SIGN_OUT_WARNING = "Signed out. The provider could not be reached to revoke the token; it was removed here."


@pytest.mark.parametrize("mode", ["500_html", "redirect_302", "hang", "trickle"])
def test_sign_out_completes_when_revocation_fails(rig: Rig, mode: str) -> None:
    rig.fake.fail("revoke", mode)

    def sign_out() -> httpx2.Response:
        return rig.browser.post("/logout", data={"csrf_token": page_csrf(rig.browser)})

    if mode in ("hang", "trickle"):
        response, took = _while_hanging(rig, "revoke", sign_out)
    else:
        response, took = _timed(sign_out)
    assert took < REVOKE_TIMEOUT + 1.0, f"sign-out took {took:.2f} s"
    assert response.status_code == 303 and response.headers["location"] == "/"
    raw, notices = rig.page()
    assert notices == [("warning", SIGN_OUT_WARNING)]
    _assert_clear_line(notices[0][1], raw, rig)
    assert rig.path.read_text() == USER_FILE  # removed here, everything else kept
    assert rig.requests("stolen") == []


@pytest.mark.parametrize("mode", ["500_html", "other_issuer", "hang"])
def test_sign_out_completes_when_discovery_fails(
    fake: FaultyProvider, fresh: Callable[[], Rig], mode: str
) -> None:
    fake.fail("discovery", mode)
    rig = fresh()
    response, took = _timed(lambda: rig.browser.post("/logout", data={"csrf_token": page_csrf(rig.browser)}))
    assert took < REVOKE_TIMEOUT + 1.0 and response.status_code == 303
    assert rig.page()[1] == [("warning", SIGN_OUT_WARNING)]
    assert rig.path.read_text() == USER_FILE
    assert fake.requests("revoke") == []
