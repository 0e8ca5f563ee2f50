"""Sign-in with a code for an issuer without RFC 8628, through the Codex CLI's device protocol.

Against tests/codex_issuer.py, a loopback server that answers exactly the Codex CLI's calls and a
real token exchange with PKCE (it checks S256(code_verifier) against the challenge it issued), and
refuses what the real one would not take. On the page and with `login --device`; then the
protocol's edges: `usercode`, the interval as a number or a numeric string (kept within 1..60 s),
a user code with control characters, answers with missing fields, a 5xx, a slow answer, 403/404
while pending, 15 minutes at most, a verifier that does not match its challenge, and a 404 that
means the issuer does not offer it (the page's button then says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx2
import pytest

from tests.codex_issuer import CLIENT_ID, EMAIL, POLL, TOKEN, USERCODE, CodexIssuer, s256
from tests.conftest import free_port
from tests.portal import PortalServer, page_csrf
from tests.support import FakeTime
from webapp.codex_device import DeviceUnavailable, poll_codex_device
from webapp.device import PHISHING_WARNING, DeviceAuthorization, complete_device_login, start_device_flow
from webapp.errors import DeviceFlowError, OAuthError, ProviderError
from webapp.provider import Provider
from webapp.settings import Settings

T = TypeVar("T")
LAUNCH = "codex-device-launch-" + "c" * 32


@pytest.fixture
def issuer() -> Iterator[CodexIssuer]:
    with CodexIssuer() as server:
        yield server


def _run(provider: Provider, call: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await call()
        finally:
            await provider.aclose()

    return asyncio.run(main())


def _start(issuer: CodexIssuer, timeout: float = 5) -> DeviceAuthorization:
    provider = Provider(issuer.issuer, timeout=timeout)
    return _run(provider, lambda: start_device_flow(provider, client_id=CLIENT_ID, scope="openid"))


def _poll(
    issuer: CodexIssuer, device: DeviceAuthorization, fake: FakeTime, timeout: float = 5
) -> tuple[str, str]:
    provider = Provider(issuer.issuer, timeout=timeout)
    device = dataclasses.replace(device, started=0.0)
    return _run(provider, lambda: poll_codex_device(provider, device, sleep=fake.sleep, clock=fake.clock))


@contextlib.contextmanager
def _signed_in_browser(issuer: CodexIssuer, tmp_path: Path) -> Iterator[tuple[PortalServer, httpx2.Client]]:
    """A portal on `issuer`, and a browser that opened its launch link."""
    settings = Settings(
        config_path=tmp_path / "codex" / "config.toml",
        issuer=issuer.issuer,
        client_id=CLIENT_ID,
        port=free_port(),
        open_browser=False,
        timeout=5,
    )
    with (
        PortalServer(settings, launch_token=LAUNCH) as server,
        httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=10) as browser,
    ):
        assert browser.get(server.launch_url).status_code == 303
        yield server, browser


def _config(home: Path) -> dict[str, Any]:
    return dict(tomllib.loads((home / "config.toml").read_text())["auth"])


# ---- the journeys ----------------------------------------------------------------------------------
def test_the_page_signs_in_with_a_code(issuer: CodexIssuer, tmp_path: Path) -> None:
    with _signed_in_browser(issuer, tmp_path) as (server, browser):
        home = browser.get("/").text
        assert re.search(r'class="secondary" >Sign in with a code', home), "the button must work"
        start = browser.post("/device", data={"csrf_token": page_csrf(browser)})
        assert start.status_code == 303 and start.headers["location"] == "/device"
        page = browser.get("/device").text
        assert issuer.user_code in page
        assert f'href="{issuer.issuer}/codex/device"' in page
        assert PHISHING_WARNING in page
        issuer.approve(issuer.user_code)
        deadline = time.monotonic() + 15
        state = "pending"
        while state == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            state = browser.get("/api/device").json()["state"]
        assert state == "success"
        assert browser.get("/device").status_code == 303
        assert f"Signed in as {EMAIL}" in browser.get("/").text
    auth = _config(server.settings.codex_home)
    assert auth["issuer"] == issuer.issuer and auth["client_id"] == CLIENT_ID
    assert auth["access_token"].startswith("at_") and auth["refresh_token"].startswith("rt_")
    # What went over the wire: JSON to the device calls, a form to the token endpoint.
    (usercode,) = issuer.seen(USERCODE)
    assert usercode.content_type == "application/json" and json.loads(usercode.body) == {
        "client_id": CLIENT_ID
    }
    polls = issuer.seen(POLL)
    assert polls and all(p.content_type == "application/json" for p in polls)
    assert set(json.loads(polls[-1].body)) == {"device_auth_id", "user_code"}
    (token,) = issuer.seen(TOKEN)
    assert token.content_type == "application/x-www-form-urlencoded"
    form = dict(parse_qsl(token.body.decode()))
    assert form["grant_type"] == "authorization_code" and form["client_id"] == CLIENT_ID
    assert form["redirect_uri"] == f"{issuer.issuer}/deviceauth/callback"


def _env(issuer: CodexIssuer, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "SSH_"))}
    return {
        **env,
        "CODEX_HOME": str(home),
        "CODEX_PORTAL_ISSUER": issuer.issuer,
        "CODEX_PORTAL_CLIENT_ID": CLIENT_ID,
    }


def test_login_device_in_the_terminal(issuer: CodexIssuer, tmp_path: Path) -> None:
    home = tmp_path / "codex"
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--device"],
        env=_env(issuer, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        code = proc.stdout.readline().strip()  # the code alone on standard output
        assert code == issuer.user_code
        issuer.approve(code)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err.splitlines() == [
        f"On any device, open {issuer.issuer}/codex/device and enter this code (valid 15 min):",
        PHISHING_WARNING,
        "Waiting...",
        f"Signed in as {EMAIL}. Saved to {home / 'config.toml'} and {home / 'auth.json'}.",
    ]
    assert _config(home)["access_token"].startswith("at_")
    assert (
        json.loads((home / "auth.json").read_text())["tokens"]["access_token"]
        == _config(home)["access_token"]
    )


def test_a_5xx_from_the_issuer_ends_login_device_with_one_line(issuer: CodexIssuer, tmp_path: Path) -> None:
    issuer.status[USERCODE] = 503
    home = tmp_path / "codex"
    done = subprocess.run(
        [sys.executable, "-m", "webapp", "login", "--device"],
        env=_env(issuer, home),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"Error: the Codex CLI's device sign-in at {issuer.issuer} answered HTTP 503; try again later.\n"
    )
    assert not (home / "config.toml").exists()


# ---- the protocol's edges ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "kept"),
    [("5", 5.0), (5, 5.0), (2.5, 2.5), ("0", 1.0), (0.001, 1.0), (600, 60.0), ("3600", 60.0), (None, 5.0)],
)
def test_the_interval_is_a_number_or_a_numeric_string_within_1_to_60_s(sent: object, kept: float) -> None:
    with CodexIssuer(interval=sent) as issuer:
        device = _start(issuer)
    assert device.interval == kept and device.protocol == "codex"
    assert device.verification_uri == f"{issuer.issuer}/codex/device" and device.expires_in == 15 * 60


def test_usercode_is_taken_for_user_code_and_control_characters_are_stripped() -> None:
    with CodexIssuer(code_key="usercode", user_code="\x1b]0;pwned\x07\x1b[2JAB12-\u202eCD34\r\n") as issuer:
        device = _start(issuer)
        assert device.user_code == "]0;pwned[2JAB12-CD34"  # no escape, no bidi override, no line break


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"device_auth_id": "deviceauth_x", "interval": "5"},
        {"user_code": "AB12-CD34", "interval": "5"},
        {"device_auth_id": "", "user_code": "AB12-CD34"},
        {"device_auth_id": 7, "user_code": "AB12-CD34"},
        {"device_auth_id": "deviceauth_x", "user_code": "\x1b\x07"},
        {"device_auth_id": "deviceauth_x", "user_code": "AB12-CD34", "interval": "soon"},
        {"device_auth_id": "deviceauth_x", "user_code": "AB12-CD34", "interval": True},
    ],
)
def test_an_answer_with_missing_or_bad_fields_is_refused(body: dict[str, Any]) -> None:
    with (
        CodexIssuer(usercode_body=body) as issuer,
        pytest.raises(ProviderError, match="Codex CLI's device sign-in"),
    ):
        _start(issuer)


def test_a_slow_answer_is_cut_at_the_deadline(issuer: CodexIssuer) -> None:
    issuer.delay[USERCODE] = 2.0
    began = time.monotonic()
    with pytest.raises(ProviderError, match="timed out"):
        _start(issuer, timeout=0.5)
    assert time.monotonic() - began < 1.9


def test_a_404_means_not_offered_and_the_page_says_so(issuer: CodexIssuer, tmp_path: Path) -> None:
    issuer.status[USERCODE] = 404
    with pytest.raises(DeviceUnavailable, match="does not offer sign-in with a code"):
        _start(issuer)
    with _signed_in_browser(issuer, tmp_path) as (server, browser):
        start = browser.post("/device", data={"csrf_token": page_csrf(browser)})
        assert start.status_code == 303 and start.headers["location"] == "/"
        page = browser.get("/").text
        assert "does not offer sign-in with a code" in page  # the notice, once
        assert re.search(r'disabled aria-describedby="device-note">\s*Sign in with a code', page)
        assert re.search(r"does not answer the Codex CLI's device protocol", page)
    assert not server.settings.config_path.exists()


def test_403_and_404_are_pending_and_a_5xx_or_a_slow_poll_is_waited_out(issuer: CodexIssuer) -> None:
    device = _start(issuer)  # interval "1"
    issuer.poll_statuses[:] = [403, 404, 503, 500, 403]

    def person(sleeps: int) -> None:
        if sleeps == 6:
            issuer.delay[POLL] = 1.0  # the sixth poll is slow: cut, then tried again
        if sleeps == 7:
            issuer.delay.pop(POLL)
            issuer.approve(issuer.user_code)

    fake = FakeTime(on_sleep=person)
    code, verifier = _poll(issuer, device, fake, timeout=0.3)
    # 1 s while pending; doubled after a 5xx or a timeout (up to 60), back to 1 s when pending again.
    assert fake.sleeps == [1, 1, 1, 2, 4, 1, 2]
    assert code.startswith("ac_") and len(verifier) >= 43


def test_polling_stops_after_fifteen_minutes(issuer: CodexIssuer) -> None:
    device = _start(issuer)
    fake = FakeTime()
    with pytest.raises(DeviceFlowError, match="expired") as caught:
        _poll(issuer, dataclasses.replace(device, interval=60.0), fake)
    assert caught.value.error == "expired_token"
    assert sum(fake.sleeps) <= 15 * 60 and len(issuer.seen(POLL)) == len(fake.sleeps) == 14


def test_a_verifier_that_does_not_match_its_challenge_is_refused(issuer: CodexIssuer) -> None:
    issuer.code_challenge = s256("another verifier of the right length, which was never issued")
    device = _start(issuer)
    issuer.approve(issuer.user_code)
    with pytest.raises(ProviderError, match="does not match its challenge"):
        _poll(issuer, device, FakeTime())
    assert issuer.seen(TOKEN) == []  # nothing was exchanged


def test_a_refused_exchange_saves_nothing_and_says_why(issuer: CodexIssuer) -> None:
    """The issuer's token endpoint refuses (here: another client id): an OAuth error, no tokens."""
    issuer.client_id = "someone-else"
    provider = Provider(issuer.issuer, timeout=5)

    async def flow() -> object:
        device = await start_device_flow(provider, client_id="someone-else", scope="openid")
        issuer.client_id = CLIENT_ID
        issuer.approve(issuer.user_code)
        fast = dataclasses.replace(
            device, interval=0.01
        )  # (kept within 1..60 s when it comes from the issuer)
        return await complete_device_login(provider, fast, client_id="someone-else")

    with pytest.raises(OAuthError, match="refused: invalid_client"):
        _run(provider, flow)


# ---- the server is strict: a client that drifts from the protocol fails ---------------------------
def test_the_loopback_issuer_refuses_what_the_real_one_would(issuer: CodexIssuer) -> None:
    with httpx2.Client(base_url=issuer.issuer, timeout=5) as client:
        assert client.post(USERCODE, data={"client_id": CLIENT_ID}).status_code == 415  # a form
        assert (
            client.post(
                USERCODE, content=b"client_id", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        assert client.post(USERCODE, json={}).status_code == 400
        assert client.post(USERCODE, json={"client_id": CLIENT_ID, "scope": "openid"}).status_code == 400
        assert client.post(USERCODE, json={"client_id": "other"}).status_code == 401
        started = client.post(USERCODE, json={"client_id": CLIENT_ID}).json()
        ids = {"device_auth_id": started["device_auth_id"], "user_code": started["user_code"]}
        assert client.post(POLL, data=ids).status_code == 415
        assert client.post(POLL, json={"device_auth_id": ids["device_auth_id"]}).status_code == 400
        assert client.post(POLL, json={**ids, "user_code": "WRONG"}).status_code == 404
        assert client.post(POLL, json=ids).status_code == 403  # pending
        issuer.approve(ids["user_code"])
        answer = client.post(POLL, json=ids).json()
        assert answer["code_challenge"] == s256(answer["code_verifier"])
        form = {
            "grant_type": "authorization_code",
            "code": answer["authorization_code"],
            "redirect_uri": f"{issuer.issuer}/deviceauth/callback",
            "client_id": CLIENT_ID,
            "code_verifier": answer["code_verifier"],
        }
        assert client.post(TOKEN, json=form).status_code == 400  # JSON where a form is due
        assert client.post(TOKEN, data={**form, "code_verifier": "x" * 43}).json() == {
            "error": "invalid_grant"
        }
        assert (
            client.post(
                TOKEN, data={**form, "redirect_uri": "http://localhost:1455/auth/callback"}
            ).status_code
            == 400
        )
        assert client.post(TOKEN, data=form).status_code == 200
        assert client.post(TOKEN, data=form).json() == {"error": "invalid_grant"}  # one use
