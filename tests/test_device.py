"""Device-code sign-in (RFC 8628): the real provider for the journeys, a fake at the HTTP transport
only for what the real one never does (slow_down, a missing interval, outages)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from tests.idp import TestProvider
from tests.portal import PortalServer, page_csrf, settings_for
from tests.support import FakeTime
from webapp.credentials import Credentials
from webapp.device import DeviceAuthorization, poll_device_token, start_device_flow
from webapp.errors import DeviceFlowError, OAuthError, ProviderError
from webapp.provider import Provider, ProviderMetadata

META = ProviderMetadata(
    issuer="https://idp.test",
    authorization_endpoint="https://idp.test/authorize",
    token_endpoint="https://idp.test/token",
    device_authorization_endpoint="https://idp.test/device/code",
)
LAUNCH = "device-launch-token-0123456789abcdef"


def _device(expires_in: int = 600, interval: float = 5.0) -> DeviceAuthorization:
    return DeviceAuthorization(
        "dc", "ABCD-EFGH", "https://idp.test/device", None, expires_in, interval, started=0.0
    )


def _token_endpoint(answers: list[object]) -> httpx2.MockTransport:
    """Answers each poll in turn: an error code, an exception to raise, or the token."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/token"
        form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
        assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):
            return httpx2.Response(400, json={"error": answer})
        return httpx2.Response(200, json=answer)

    return httpx2.MockTransport(handler)


def _provider(transport: httpx2.MockTransport | None, metadata: ProviderMetadata = META) -> Provider:
    """A provider whose endpoints are known (no discovery) and whose HTTP is `transport`."""
    return Provider(metadata.issuer, timeout=1, transport=transport, metadata=metadata)


def _poll(answers: list[object], device: DeviceAuthorization, fake: FakeTime) -> Credentials:
    return asyncio.run(
        poll_device_token(
            _provider(_token_endpoint(answers)),
            device,
            client_id="c",
            sleep=fake.sleep,
            clock=fake.clock,
        )
    )


TOKEN = {"access_token": "at", "token_type": "Bearer", "expires_in": 60, "refresh_token": "rt"}


def test_slow_down_adds_five_seconds_and_keeps_them() -> None:
    fake = FakeTime()
    answers: list[object] = [
        "authorization_pending",
        "slow_down",
        "authorization_pending",
        "slow_down",
        "authorization_pending",
        TOKEN,
    ]
    tokens = _poll(answers, _device(), fake)
    assert fake.sleeps == [5, 5, 10, 10, 15, 15]
    assert tokens.refresh_token == "rt"


def test_network_errors_back_off_then_recover() -> None:
    fake = FakeTime()
    answers: list[object] = [
        httpx2.ConnectError("down"),
        httpx2.ReadTimeout("slow"),
        "authorization_pending",
        TOKEN,
    ]
    _poll(answers, _device(), fake)
    assert fake.sleeps == [5, 10, 20, 5]


@pytest.mark.parametrize(("code", "words"), [("expired_token", "expired"), ("access_denied", "denied")])
def test_end_states(code: str, words: str) -> None:
    with pytest.raises(DeviceFlowError) as caught:
        _poll(["authorization_pending", code], _device(), FakeTime())
    assert caught.value.error == code and words in caught.value.message


def test_other_errors_are_not_retried() -> None:
    with pytest.raises(OAuthError) as caught:
        _poll(["invalid_client"], _device(), FakeTime())
    assert caught.value.error == "invalid_client"


def test_polling_stops_when_the_code_expires() -> None:
    fake = FakeTime()
    with pytest.raises(DeviceFlowError) as caught:
        _poll(["authorization_pending"] * 100, _device(expires_in=12), fake)
    assert caught.value.error == "expired_token"
    assert sum(fake.sleeps) <= 12


def _device_endpoint(body: dict[str, object], status: int = 200) -> httpx2.MockTransport:
    return httpx2.MockTransport(lambda request: httpx2.Response(status, json=body))


def test_missing_interval_defaults_to_five_seconds() -> None:
    body = {
        "device_code": "d",
        "user_code": "U",
        "verification_uri": "https://idp.test/device",
        "expires_in": 600,
    }
    device = asyncio.run(start_device_flow(_provider(_device_endpoint(body)), client_id="c", scope="openid"))
    assert device.interval == 5 and device.verification_uri_complete is None


@pytest.mark.parametrize(
    "body",
    [
        {"device_code": "d", "user_code": "U", "verification_uri": "javascript:alert(1)", "expires_in": 600},
        {
            "device_code": "d",
            "user_code": "U",
            "verification_uri": "http://evil.example/device",
            "expires_in": 600,
        },
        {"device_code": "d", "verification_uri": "https://idp.test/device", "expires_in": 600},
        {
            "device_code": "d",
            "user_code": "U",
            "verification_uri": "https://idp.test/device",
            "expires_in": "soon",
        },
    ],
)
def test_bad_device_answers_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ProviderError):
        asyncio.run(start_device_flow(_provider(_device_endpoint(body)), client_id="c", scope="openid"))


def test_no_device_endpoint_says_why() -> None:
    """No RFC 8628 endpoint, and the Codex CLI's device protocol answers 404 (not there either)."""
    meta = ProviderMetadata(issuer="https://idp.test", authorization_endpoint="a", token_endpoint="t")
    asked: list[str] = []

    def not_found(request: httpx2.Request) -> httpx2.Response:
        asked.append(request.url.path)
        return httpx2.Response(404, json={"error": "not_found"})

    with pytest.raises(ProviderError, match="does not offer sign-in with a code"):
        transport = httpx2.MockTransport(not_found)
        asyncio.run(start_device_flow(_provider(transport, meta), client_id="c", scope="openid"))
    assert asked == ["/api/accounts/deviceauth/usercode"]


# --- The real provider -------------------------------------------------------------------------


def _env(idp: TestProvider, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CODEX_HOME": str(home),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
    }


def _login_device(
    idp: TestProvider, home: Path, user_step: Callable[[str], None]
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--device"],
        env=_env(idp, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    user_code = proc.stdout.readline().strip()
    assert user_code
    user_step(user_code)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_cli_device_sign_in(idp: TestProvider, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _login_device(idp, tmp_path, idp.approve_device)
    assert result.returncode == 0, result.stderr
    assert "Signed in as alice@example.test" in result.stderr
    auth = tomllib.loads((tmp_path / "config.toml").read_text())["auth"]
    assert {"access_token", "refresh_token", "expires_at", "issuer", "client_id"} <= set(auth)
    assert isinstance(auth["expires_at"], int)
    print(f"device sign-in from the CLI took {time.monotonic() - started:.1f} s")


def test_cli_device_denied(idp: TestProvider, tmp_path: Path) -> None:
    result = _login_device(idp, tmp_path, idp.deny_device)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("Error: the sign-in was denied on the other device.")
    assert not (tmp_path / "config.toml").exists()


@pytest.fixture
def device_portal(idp: TestProvider, tmp_path: Path) -> Iterator[httpx2.Client]:
    settings = settings_for(idp, tmp_path / "config.toml")
    with PortalServer(settings, launch_token=LAUNCH) as server:
        with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=20) as browser:
            browser.get(server.launch_url)
            yield browser


def _wait_until_ended(browser: httpx2.Client) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = browser.get("/api/device").json()["state"]
        if state != "pending":
            return str(state)
        time.sleep(0.5)
    raise AssertionError("the device sign-in did not end")


def test_page_device_sign_in(idp: TestProvider, device_portal: httpx2.Client, tmp_path: Path) -> None:
    browser = device_portal
    assert ">Sign in with a code</button>" in browser.get("/").text
    start = browser.post("/device", data={"csrf_token": page_csrf(browser)})
    assert start.status_code == 303 and start.headers["location"] == "/device"
    page = browser.get("/device").text
    user_code = page.split('id="user-code" aria-live="off">')[1].split("<")[0]
    assert f'href="{idp.issuer}/device"' in page and "/static/device.js" in page
    assert 'http-equiv="refresh"' in page  # updates itself without JavaScript too
    idp.approve_device(user_code)
    assert _wait_until_ended(browser) == "success"
    done = browser.get("/device")
    assert done.status_code == 303
    assert "Signed in as alice@example.test" in browser.get("/").text
    assert "access_token" in tomllib.loads((tmp_path / "config.toml").read_text())["auth"]


def test_page_device_cancel_and_denied(
    idp: TestProvider, device_portal: httpx2.Client, tmp_path: Path
) -> None:
    browser = device_portal
    grants = len(idp.events("grant.success"))
    browser.post("/device", data={"csrf_token": page_csrf(browser)})
    first = browser.get("/device").text.split('id="user-code" aria-live="off">')[1].split("<")[0]
    # Starting again replaces the pending one: one at a time.
    browser.post("/device", data={"csrf_token": page_csrf(browser)})
    second = browser.get("/device").text.split('id="user-code" aria-live="off">')[1].split("<")[0]
    assert first != second
    idp.deny_device(second)
    assert _wait_until_ended(browser) == "error"
    browser.get("/device")
    assert "denied on the other device" in browser.get("/").text
    browser.post("/device", data={"csrf_token": page_csrf(browser)})
    cancel = browser.post("/device/cancel", data={"csrf_token": page_csrf(browser)})
    assert cancel.status_code == 303
    assert browser.get("/api/device").json() == {"state": "none"}
    assert "cancelled" in browser.get("/").text
    assert not (tmp_path / "config.toml").exists()
    assert len(idp.events("grant.success")) == grants
