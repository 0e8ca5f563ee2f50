"""Refresh against the real provider, which rotates refresh tokens and revokes the whole chain
when an old one is reused: exactly one refresh however many callers ask at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import tomlkit

from tests.idp import TestProvider
from tests.portal import page_csrf, settings_for, signed_in_portal
from webapp.accounts import Account
from webapp.settings import Settings
from webapp.stores import ConfigTomlStore

CALLERS = 8


@pytest.fixture
def settings(idp: TestProvider, tmp_path: Path) -> Settings:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text('model = "o3"\n')
    return settings_for(idp, home / "config.toml")


@pytest.fixture
def browser(idp: TestProvider, settings: Settings) -> Iterator[httpx2.Client]:
    with signed_in_portal(idp, settings) as client:
        yield client


def _auth(settings: Settings) -> dict[str, object]:
    return dict(tomllib.loads(settings.config_path.read_text())["auth"])


def _expire(settings: Settings) -> None:
    """Make the saved access token look expired, as an external writer honouring the lock would."""
    with ConfigTomlStore(settings.config_path).transaction():
        doc = tomlkit.parse(settings.config_path.read_text())
        doc["auth"]["expires_at"] = 1_000_000
        settings.config_path.write_text(tomlkit.dumps(doc))


def _refreshes(idp: TestProvider) -> int:
    return sum(1 for e in idp.events("grant.success") if e.get("grant_type") == "refresh_token")


def _token_cmd(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "webapp", "token"]


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "CODEX_HOME": str(settings.config_path.parent)}


def _start_token_processes(settings: Settings, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            _token_cmd(settings),
            env=_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


def _results(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out.strip(), err))
    return results


def test_token_is_fresh_without_refreshing(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    before = _refreshes(idp)
    out = subprocess.run(_token_cmd(settings), env=_env(settings), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == _auth(settings)["access_token"]
    assert _refreshes(idp) == before


def test_eight_processes_refresh_exactly_once(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    old = _auth(settings)
    _expire(settings)
    before = _refreshes(idp)
    results = _results(_start_token_processes(settings, CALLERS))
    assert all(code == 0 for code, _, _ in results), results
    tokens = {out for _, out, _ in results}
    new = _auth(settings)
    assert tokens == {new["access_token"]} and new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]  # the rotated one was saved
    assert isinstance(new["expires_at"], int) and new["expires_at"] > 1_000_000
    assert _refreshes(idp) == before + 1
    assert not idp.events("grant.error") or all(
        e.get("error_detail") != "refresh token already used" for e in idp.events("grant.error")
    )
    # The chain was not revoked: a later refresh still works.
    _expire(settings)
    again = subprocess.run(_token_cmd(settings), env=_env(settings), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert _refreshes(idp) == before + 2


def test_threads_in_one_process_refresh_once(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    _expire(settings)
    before = _refreshes(idp)
    account = Account(settings)  # one object shared by the threads, as the portal shares its own
    seen: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: seen.append(account.run(account.refresh()).access_token))
        for _ in range(CALLERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(seen) == CALLERS and len(set(seen)) == 1
    assert _refreshes(idp) == before + 1


def test_refresh_button_races_cli_processes(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    _expire(settings)
    csrf = page_csrf(browser)  # the page was shown with the expired token
    page = browser.get("/").text
    seen = page.split('name="seen" value="')[1].split('"')[0]
    before = _refreshes(idp)
    procs = _start_token_processes(settings, 4)
    button = browser.post("/refresh", data={"csrf_token": csrf, "seen": seen})
    results = _results(procs)
    assert button.status_code == 303
    assert all(code == 0 for code, _, _ in results), results
    assert _refreshes(idp) == before + 1
    assert {out for _, out, _ in results} == {_auth(settings)["access_token"]}
    assert "Access token refreshed" in browser.get("/").text


def test_refresh_button_forces_a_refresh(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    old = _auth(settings)
    before = _refreshes(idp)
    page = browser.get("/").text
    assert ">Refresh</button>" in page
    seen = page.split('name="seen" value="')[1].split('"')[0]
    assert browser.post("/refresh", data={"csrf_token": page_csrf(browser), "seen": seen}).status_code == 303
    assert _auth(settings)["access_token"] != old["access_token"]
    assert _refreshes(idp) == before + 1
    # The same (now stale) page pressed again: someone already refreshed that token; nothing happens.
    assert browser.post("/refresh", data={"csrf_token": page_csrf(browser), "seen": seen}).status_code == 303
    assert _refreshes(idp) == before + 1


def test_revoked_refresh_token_says_sign_in_again(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    auth = _auth(settings)
    revoke = httpx2.post(
        f"{idp.issuer}/token/revocation",
        data={"token": auth["refresh_token"], "token_type_hint": "refresh_token", "client_id": idp.client_id},
    )
    assert revoke.status_code == 200
    _expire(settings)
    errors = len(idp.events("grant.error"))
    first = subprocess.run(_token_cmd(settings), env=_env(settings), capture_output=True, text=True)
    assert first.returncode == 1
    assert first.stderr.strip() == "Error: session expired, sign in again."
    assert "refresh_token" not in _auth(settings)  # the dead token is forgotten, nothing retries it
    second = subprocess.run(_token_cmd(settings), env=_env(settings), capture_output=True, text=True)
    assert second.returncode == 1 and "sign in again" in second.stderr
    assert len(idp.events("grant.error")) == errors + 1  # the provider was asked once, not in a loop
    status = subprocess.run(
        [sys.executable, "-m", "webapp", "status", "--json"],
        env=_env(settings),
        capture_output=True,
        text=True,
    )
    assert status.returncode == 1 and '"expired": true' in status.stdout
    assert "Session expired" in browser.get("/").text


def test_unreachable_provider_keeps_the_tokens(
    idp: TestProvider, browser: httpx2.Client, settings: Settings
) -> None:
    with ConfigTomlStore(settings.config_path).transaction():
        doc = tomlkit.parse(settings.config_path.read_text())
        doc["auth"]["issuer"] = "http://127.0.0.1:9"
        doc["auth"]["expires_at"] = 1_000_000
        settings.config_path.write_text(tomlkit.dumps(doc))
    before = settings.config_path.read_text()
    out = subprocess.run(_token_cmd(settings), env=_env(settings), capture_output=True, text=True)
    assert out.returncode == 1
    assert "could not refresh" in out.stderr and "the saved tokens were kept" in out.stderr
    assert "Traceback" not in out.stderr
    assert settings.config_path.read_text() == before
