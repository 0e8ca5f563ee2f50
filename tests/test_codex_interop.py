"""The portal and the real Codex CLI (npm @openai/codex, pinned in tests/codex) on one CODEX_HOME.

The binary's own words (`codex login status`) judge what it sees; the test provider's event log
counts refreshes and any reuse of a rotated refresh token (`invalid_grant`). Nothing is mocked: the
portal runs as its real server or as `python -m webapp` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.codex_cli import (
    CODEX_BIN,
    codex_env,
    codex_home_with_config,
    codex_provider,
    jwt_claims,
    login_status,
    login_with_api_key,
    logout,
    read_auth_json,
    realistic_config,
    refresh_with_codex,
)
from tests.idp import TestProvider
from tests.portal import page_csrf, settings_for, signed_in_portal
from webapp.stores import ConfigTomlStore

KEY = "sk-test-abcdefghijklmnop"  # the Codex CLI shows it as sk-test-***lmnop
OTHER_KEY = "sk-test-zyxwvutsrqponmlk"


def _provider(ttl: int) -> Iterator[TestProvider]:
    with codex_provider(ttl).start() as provider:
        yield provider


@pytest.fixture(scope="module")
def idp() -> Iterator[TestProvider]:
    """Access tokens that live 290 s: inside the Codex CLI's 5-minute window, so every `codex exec`
    refreshes at once; outside the portal's 60 s margin, so the portal refreshes only when asked."""
    yield from _provider(290)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return codex_home_with_config(tmp_path)


def portal(
    home: Path, idp: TestProvider, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m webapp ARGS` (= codex-portal) on `home`, pointed at the test provider."""
    env = {
        **os.environ,
        "CODEX_HOME": str(home),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
    }
    for name in ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_PORTAL_CODEX_SYNC"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "webapp", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def status(home: Path, idp: TestProvider) -> dict[str, Any]:
    done = portal(home, idp, "status", "--json")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def auth_table(home: Path) -> dict[str, Any]:
    return dict(tomllib.loads((home / "config.toml").read_text()).get("auth", {}))


def invalid_grants(idp: TestProvider) -> int:
    return sum(1 for e in idp.events("grant.error") if e.get("error") == "invalid_grant")


def refreshes(idp: TestProvider, grant_id: str) -> int:
    return sum(1 for e in idp.events("grant.success") if e.get("grant_id") == grant_id and e.get("refresh"))


def grant_of(home: Path, idp: TestProvider) -> str:
    """The provider's grant behind the login in `home` (from its account's last sign-in)."""
    del home
    grant: str = [e for e in idp.events("grant.success") if not e.get("refresh")][-1]["grant_id"]
    return grant


# ---- the portal's changes, seen by the Codex CLI ----------------------------------------------------
def test_a_portal_sign_in_and_sign_out_are_what_codex_sees(idp: TestProvider, home: Path) -> None:
    before = (home / "config.toml").read_text()
    assert login_status(home) == (1, "Not logged in")
    with signed_in_portal(idp, settings_for(idp, home / "config.toml")) as browser:
        assert login_status(home) == (0, "Logged in using ChatGPT")
        data = read_auth_json(home)
        assert data["auth_mode"] == "chatgpt" and data["tokens"]["account_id"] == "acct-alice"
        assert data["tokens"]["refresh_token"] == auth_table(home)["refresh_token"]
        report = browser.get("/api/status").json()
        assert report["email"] == "alice@example.test"
        assert report["codex_cli"] == {
            "store": "file",
            "path": str(home / "auth.json"),
            "signed_in": True,
            "in_sync": True,
        }
        page = browser.get("/").text
        assert "Codex CLI" in page and "Sees this same login" in page
        assert browser.post("/logout", data={"csrf_token": page_csrf(browser)}).status_code == 303
        assert login_status(home) == (1, "Not logged in")
    assert not (home / "auth.json").exists()
    assert (home / "config.toml").read_text() == before


def test_a_key_saved_in_the_portal_is_the_codex_cli_key(idp: TestProvider, home: Path) -> None:
    done = portal(home, idp, "login", "--api-key", stdin=KEY + "\n")
    assert done.returncode == 0, done.stderr
    code, text = login_status(home)
    assert code == 0 and text.startswith("API key configured - sk-test-***lmnop"), text
    done = portal(home, idp, "logout")
    assert done.returncode == 0 and "auth.json" in done.stderr
    assert login_status(home) == (1, "Not logged in")


# ---- the Codex CLI's changes, seen by the portal ----------------------------------------------------
def test_codex_login_with_an_api_key_shows_in_the_portal_and_config_follows(
    idp: TestProvider, home: Path
) -> None:
    login_with_api_key(home, KEY)
    report = status(home, idp)
    assert report["signed_in"] and report["method"] == "api_key" and report["api_key_hint"] == "sk-…mnop"
    assert report["codex_cli"]["in_sync"] is True
    assert auth_table(home) == {"api_key": KEY}
    login_with_api_key(home, OTHER_KEY)  # a later change by the Codex CLI wins again
    assert status(home, idp)["api_key_hint"] == "sk-…nmlk"
    assert auth_table(home) == {"api_key": OTHER_KEY}


def test_codex_logout_signs_the_portal_out(idp: TestProvider, home: Path) -> None:
    with signed_in_portal(idp, settings_for(idp, home / "config.toml")) as browser:
        assert logout(home).returncode == 0
        report = browser.get("/api/status").json()
        assert report["signed_in"] is False and report["method"] is None
        assert "auth" not in tomllib.loads((home / "config.toml").read_text())


def test_an_existing_codex_login_is_the_login_a_new_portal_shows(idp: TestProvider, home: Path) -> None:
    login_with_api_key(home, KEY)
    assert (home / "config.toml").read_text() == realistic_config(home.parent / "x" / "config.toml")
    report = status(home, idp)
    assert report["api_key_hint"] == "sk-…mnop" and report["codex_cli"]["signed_in"] is True


# ---- refresh: a rotated refresh token is never sent twice -------------------------------------------
def test_the_portal_uses_the_tokens_the_codex_cli_rotated(idp: TestProvider, home: Path) -> None:
    settings = settings_for(idp, home / "config.toml")
    with signed_in_portal(idp, settings) as browser:
        grant = grant_of(home, idp)
        errors = invalid_grants(idp)
        first = auth_table(home)
        refresh_with_codex(home, f"{idp.issuer}/token")
        # The Codex CLI refreshes a 290 s token on every request: it may have done so twice.
        rotated = read_auth_json(home)["tokens"]
        assert rotated["refresh_token"] != first["refresh_token"] and refreshes(idp, grant) >= 1
        codex_refreshes = refreshes(idp, grant)

        # The portal's next token is the Codex CLI's (no refresh needed), and [auth] follows.
        done = portal(home, idp, "token")
        assert done.returncode == 0 and done.stdout.strip() == rotated["access_token"]
        assert auth_table(home)["refresh_token"] == rotated["refresh_token"]
        assert auth_table(home)["expires_at"] == jwt_claims(rotated["access_token"])["exp"]

        # Refresh in the page: it starts from the rotated token.
        answer = browser.post("/refresh", data={"csrf_token": page_csrf(browser)})
        assert answer.status_code == 303
        assert "Access token refreshed" in browser.get("/").text
        assert refreshes(idp, grant) == codex_refreshes + 1
        after = read_auth_json(home)["tokens"]
        assert after["refresh_token"] not in (first["refresh_token"], rotated["refresh_token"])
        assert auth_table(home)["refresh_token"] == after["refresh_token"]

        # And the Codex CLI goes on from the portal's refresh.
        refresh_with_codex(home, f"{idp.issuer}/token")
        again = read_auth_json(home)["tokens"]
        assert again["refresh_token"] != after["refresh_token"]
        assert refreshes(idp, grant) > codex_refreshes + 1
        assert login_status(home) == (0, "Logged in using ChatGPT")
        assert portal(home, idp, "token").stdout.strip() == again["access_token"]
    assert invalid_grants(idp) == errors


@pytest.fixture(scope="module")
def slow_idp() -> Iterator[TestProvider]:
    """Access tokens of 310 s: the Codex CLI refreshes one only once it is 10 s old, so tokens just
    refreshed by anyone are left alone by everyone."""
    yield from _provider(310)


def test_portal_processes_during_a_codex_refresh_reuse_nothing(slow_idp: TestProvider, home: Path) -> None:
    """The Codex CLI refreshes 5 minutes before expiry, the portal 60 s before: while the Codex CLI
    refreshes, portal processes asking for a token take either the token still valid or the new
    one, and refresh nothing themselves."""
    idp = slow_idp
    with signed_in_portal(idp, settings_for(idp, home / "config.toml")):
        grant = grant_of(home, idp)
    errors = invalid_grants(idp)
    first = auth_table(home)["access_token"]
    time.sleep(11)  # now inside the Codex CLI's window, still outside the portal's margin
    results: list[str] = []
    codex_error: list[BaseException] = []

    def codex() -> None:
        try:
            refresh_with_codex(home, f"{idp.issuer}/token")
        except BaseException as exc:  # reported below
            codex_error.append(exc)

    def one_portal() -> None:
        done = portal(home, idp, "token")
        results.append(done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr}")

    threads = [threading.Thread(target=codex)] + [threading.Thread(target=one_portal) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not codex_error, codex_error
    final = read_auth_json(home)["tokens"]
    assert set(results) <= {first, final["access_token"]}, results
    assert refreshes(idp, grant) == 1  # the Codex CLI's
    assert invalid_grants(idp) == errors
    assert portal(home, idp, "token").stdout.strip() == final["access_token"]
    assert auth_table(home)["refresh_token"] == final["refresh_token"]
    assert login_status(home) == (0, "Logged in using ChatGPT")


def test_portal_processes_after_expiry_and_then_the_codex_cli_make_one_refresh_each(
    idp: TestProvider, home: Path
) -> None:
    with signed_in_portal(idp, settings_for(idp, home / "config.toml")):
        grant = grant_of(home, idp)
    errors = invalid_grants(idp)
    with ConfigTomlStore(home / "config.toml").transaction():  # past the portal's margin
        doc = tomlkit.parse((home / "config.toml").read_text())
        doc["auth"]["expires_at"] = int(time.time()) - 1
        (home / "config.toml").write_text(tomlkit.dumps(doc))
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: portal(home, idp, "token"), range(6)))
    assert all(done.returncode == 0 for done in results), [done.stderr for done in results]
    tokens = {done.stdout.strip() for done in results}
    assert len(tokens) == 1 and refreshes(idp, grant) == 1
    assert read_auth_json(home)["tokens"]["access_token"] in tokens  # the Codex CLI's file too
    rotated = refresh_with_codex(home, f"{idp.issuer}/token")["tokens"]  # it goes on from there
    assert refreshes(idp, grant) == 2 and invalid_grants(idp) == errors
    assert portal(home, idp, "token").stdout.strip() == rotated["access_token"]


# ---- both tools writing at once -----------------------------------------------------------------------
def test_both_tools_writing_at_once_leave_both_files_whole_and_agreeing(
    idp: TestProvider, home: Path
) -> None:
    keys = [f"sk-test-race-{n:04d}-abcdefgh" for n in range(12)]
    failures: list[str] = []

    def codex_writer() -> None:
        for key in keys[::2]:
            done = subprocess.run(
                [str(CODEX_BIN), "login", "--with-api-key"],
                input=key + "\n",
                capture_output=True,
                text=True,
                env=codex_env(home),
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                failures.append(done.stderr)

    def portal_writer() -> None:
        for key in keys[1::2]:
            done = portal(home, idp, "login", "--api-key", stdin=key + "\n")
            if done.returncode != 0:
                failures.append(done.stderr)

    threads = [threading.Thread(target=codex_writer), threading.Thread(target=portal_writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    report = status(home, idp)  # brings them in step if the Codex CLI wrote last
    key = read_auth_json(home)["OPENAI_API_KEY"]
    assert key in keys and auth_table(home) == {"api_key": key}
    assert report["codex_cli"]["in_sync"] is True
    code, text = login_status(home)
    assert code == 0 and text.startswith(f"API key configured - {key[:8]}***{key[-5:]}"), text
    tomllib.loads((home / "config.toml").read_text())  # whole


def test_the_provider_was_never_asked_twice_for_one_token(idp: TestProvider) -> None:
    """Across this module, no rotated refresh token was ever sent again."""
    assert invalid_grants(idp) == 0, [e for e in idp.events("grant.error")]
