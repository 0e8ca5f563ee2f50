"""A hostile provider's values: numbers that overflow, answers that are too large or too deep, and
text carrying terminal escapes. Each becomes one clear refusal or a clamped value, never a 500, a
traceback or a file nobody can read back.

The fake provider (tests/faulty_idp.py) stands in because a real one cannot be made to send these.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from tests.conftest import LAUNCH_TOKEN, PORT
from tests.faulty_idp import FaultyProvider
from webapp.app import create_app
from webapp.credentials import Credentials
from webapp.device import MAX_LIFETIME, MIN_INTERVAL, start_device_flow
from webapp.errors import LoginError, ProviderError
from webapp.oauth import MAX_EXPIRES_IN, PendingLogins, authorization_url, exchange_code
from webapp.provider import MAX_DOCUMENT, Provider
from webapp.settings import Settings
from webapp.stores import ConfigTomlStore

CONTROL = set(map(chr, range(32))) | {"\x7f", "\u202e"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FaultyProvider]:
    with FaultyProvider() as provider:
        yield provider


@pytest.fixture(autouse=True)
def behave(fake: FaultyProvider) -> Iterator[None]:
    yield
    fake.faults.clear()
    fake.id_token_fault = None


def sign_in(fake: FaultyProvider, tmp_path: Path) -> Credentials:
    """The browser flow's back channel, against the fake: authorize, then exchange the code."""
    settings = Settings(config_path=tmp_path / "config.toml", issuer=fake.issuer, client_id=fake.client_id)

    async def run() -> Credentials:
        provider = Provider(fake.issuer, timeout=5)
        try:
            login = PendingLogins().new(settings)
            callback = fake.authorize(authorization_url(await provider.metadata(), login))
            code = parse_qs(urlsplit(callback).query)["code"][0]
            return await exchange_code(provider, login, code)
        finally:
            await provider.aclose()

    return asyncio.run(run())


def test_an_expiry_too_far_away_is_clamped_and_saved_readably(fake: FaultyProvider, tmp_path: Path) -> None:
    fake.fail("token", "expires_in_huge")
    creds = sign_in(fake, tmp_path)
    assert creds.expires_at is not None and creds.expires_at <= time.time() + MAX_EXPIRES_IN + 5
    ConfigTomlStore(tmp_path / "config.toml").save(creds)
    assert tomllib.loads((tmp_path / "config.toml").read_text())["auth"]["expires_at"] == creds.expires_at


@pytest.mark.parametrize("mode", ["expires_in_infinity", "expires_in_1e400"])
def test_an_infinite_expiry_is_refused_in_one_line(fake: FaultyProvider, tmp_path: Path, mode: str) -> None:
    fake.fail("token", mode)
    with pytest.raises(ProviderError, match="^the provider's answer has an invalid expires_in$"):
        sign_in(fake, tmp_path)


def test_a_deeply_nested_answer_is_refused_not_a_recursion_error(
    fake: FaultyProvider, tmp_path: Path
) -> None:
    fake.fail("token", "deep_nesting")
    with pytest.raises(ProviderError, match="answered something that is not a token"):
        sign_in(fake, tmp_path)


def test_a_huge_answer_is_cut_off_at_the_cap(fake: FaultyProvider, tmp_path: Path) -> None:
    fake.fail("token", "huge_answer")
    with pytest.raises(ProviderError, match="too large"):
        sign_in(fake, tmp_path)  # once first: the fake, in this process, builds its 8 MiB answer once
    tracemalloc.start()
    try:
        with pytest.raises(ProviderError, match="too large"):
            sign_in(fake, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_DOCUMENT, f"peak {peak} bytes for an 8 MiB answer"  # never read whole


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("missing_sub", r"\(sub\)|invalid sub|missing_claim"), ("list_aud_no_azp", r"\(azp\)")],
)
def test_an_id_token_without_a_subject_or_an_authorized_party_is_refused(
    fake: FaultyProvider, tmp_path: Path, fault: str, reason: str
) -> None:
    fake.id_token_fault = fault
    with pytest.raises(LoginError, match="not valid for this sign-in") as caught:
        sign_in(fake, tmp_path)
    assert __import__("re").search(reason, caught.value.message), caught.value.message


def test_userinfo_about_another_account_is_refused(fake: FaultyProvider, tmp_path: Path) -> None:
    fake.id_token_fault = "no_email"
    assert sign_in(fake, tmp_path).email == "alice@faulty.test"  # from userinfo, same sub
    fake.fail("userinfo", "other_sub")
    with pytest.raises(LoginError, match="userinfo names another account"):
        sign_in(fake, tmp_path)


def test_an_email_with_terminal_escapes_is_shown_without_them(fake: FaultyProvider, tmp_path: Path) -> None:
    fake.id_token_fault = "escape_email"
    creds = sign_in(fake, tmp_path)
    assert creds.email == "]0;pwnedalice@faulty.test[2J"
    assert not CONTROL & set(creds.email or "")


def _device(fake: FaultyProvider) -> object:
    async def run() -> object:
        provider = Provider(fake.issuer, timeout=5)
        try:
            return await start_device_flow(provider, client_id=fake.client_id, scope="openid")
        except ProviderError as exc:
            return exc
        finally:
            await provider.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["interval_negative", "interval_tiny"])
def test_a_provider_cannot_make_us_poll_faster_than_once_a_second(fake: FaultyProvider, mode: str) -> None:
    fake.fail("device", mode)
    device = _device(fake)
    assert getattr(device, "interval", None) == MIN_INTERVAL


def test_a_code_is_waited_for_fifteen_minutes_at_most(fake: FaultyProvider) -> None:
    fake.fail("device", "lifetime_huge")
    assert getattr(_device(fake), "expires_in", None) == MAX_LIFETIME == 900


def test_a_user_code_loses_its_terminal_escapes(fake: FaultyProvider) -> None:
    fake.fail("device", "escape_user_code")
    code = getattr(_device(fake), "user_code", "")
    assert code == "]0;pwned[2JWXYZ-0000" and not CONTROL & set(code)


def test_a_verification_uri_with_an_escape_is_refused(fake: FaultyProvider) -> None:
    fake.fail("device", "escape_uri")
    refusal = _device(fake)
    assert isinstance(refusal, ProviderError) and "not a plain URL" in refusal.message


def test_an_unexpected_error_is_a_500_with_the_security_headers(tmp_path: Path) -> None:
    settings = Settings(
        config_path=tmp_path / "codex" / "config.toml", issuer="http://127.0.0.1:9", port=PORT
    )
    app = create_app(settings, launch_token=LAUNCH_TOKEN)

    def broken(*, sync: bool = True) -> object:
        raise RuntimeError("a bug, with sk-secret-in-its-message")

    app.state.portal.account.view = broken
    with TestClient(
        app, base_url=f"http://127.0.0.1:{PORT}", follow_redirects=False, raise_server_exceptions=False
    ) as client:
        client.get(f"/?token={LAUNCH_TOKEN}")
        for path in ("/", "/api/status"):
            response = client.get(path)
            assert response.status_code == 500
            assert response.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["cache-control"] == "no-store"
            assert "sk-secret" not in response.text and "Traceback" not in response.text
