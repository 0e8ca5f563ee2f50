"""Several accounts, one active (SPEC section 8), with the real provider, the real server and the
real Codex CLI: two people sign in through the provider's own pages, and the portal switches
between them without revoking anything or leaving a used refresh token in a saved copy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.codex_cli import (
    codex_home_with_config,
    codex_provider,
    login_status,
    login_with_api_key,
    read_auth_json,
    refresh_with_codex,
)
from tests.conftest import free_port
from tests.idp import TestProvider
from tests.portal import page_csrf, settings_for, sign_in, signed_in_portal
from tests.test_codex_interop import auth_table, invalid_grants, portal
from webapp.stores.saved import FILE_NAME

ALICE, BOB = "alice@example.test", "bob@example.test"
KEY = "sk-test-abcdefghijklmnop"


@pytest.fixture(scope="module")
def idp() -> Iterator[TestProvider]:
    # 290 s: the Codex CLI refreshes on every run; the portal only when asked
    with codex_provider(290).start() as provider:
        yield provider


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return codex_home_with_config(tmp_path)


@pytest.fixture
def two(idp: TestProvider, home: Path) -> Iterator[httpx2.Client]:
    """A portal where alice signed in, then bob: bob is active, alice saved."""
    with signed_in_portal(idp, settings_for(idp, home / "config.toml")) as browser:
        assert sign_in(idp, browser, login="bob").status_code == 303
        yield browser


def accounts(home: Path, idp: TestProvider) -> list[dict[str, Any]]:
    done = portal(home, idp, "accounts", "--json")
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed


def active(home: Path, idp: TestProvider) -> str:
    name: str = next(a["name"] for a in accounts(home, idp) if a["active"])
    return name


def account_id(home: Path) -> str:
    value: str = read_auth_json(home)["tokens"]["account_id"]
    return value


def revocations(idp: TestProvider) -> int:
    return len(idp.events("revocation.success"))


def test_a_second_sign_in_keeps_the_first_account(idp: TestProvider, home: Path, two: httpx2.Client) -> None:
    listed = accounts(home, idp)
    assert [(a["name"], a["active"]) for a in listed] == [(BOB, True), (ALICE, False)]
    assert listed[0]["method"] == "oauth" and listed[1]["email"] == ALICE
    assert account_id(home) == "acct-bob" and login_status(home) == (0, "Logged in using ChatGPT")
    page = two.get("/").text
    assert "Switch to alice@example.test" in page and "Remove alice@example.test" in page
    assert oct((home / FILE_NAME).stat().st_mode & 0o777) == "0o600"
    saved = (home / FILE_NAME).read_text()
    assert auth_table(home)["refresh_token"] not in saved  # the active one is not copied there


def test_switching_both_ways_from_the_page_and_the_cli_revokes_nothing(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    before, errors = revocations(idp), invalid_grants(idp)
    answer = two.post("/accounts/switch", data={"csrf_token": page_csrf(two), "name": ALICE})
    assert answer.status_code == 303
    assert "Now using alice@example.test. The Codex CLI follows." in two.get("/").text
    assert active(home, idp) == ALICE and account_id(home) == "acct-alice"
    assert login_status(home) == (0, "Logged in using ChatGPT")
    done = portal(home, idp, "switch", BOB)
    assert done.returncode == 0 and "Now using bob@example.test" in done.stderr
    assert active(home, idp) == BOB and account_id(home) == "acct-bob"
    assert revocations(idp) == before
    # Both accounts' refresh tokens still work: each refreshes once, nothing refused.
    for name in (ALICE, BOB):
        assert portal(home, idp, "switch", name).returncode == 0
        refreshed = two.post("/refresh", data={"csrf_token": page_csrf(two)})
        assert refreshed.status_code == 303 and "Access token refreshed" in two.get("/").text
    assert invalid_grants(idp) == errors and revocations(idp) == before


def test_a_codex_refresh_before_a_switch_is_kept_in_the_saved_copy(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    errors = invalid_grants(idp)
    rotated = refresh_with_codex(home, f"{idp.issuer}/token")["tokens"]  # bob's tokens rotated
    assert portal(home, idp, "switch", ALICE).returncode == 0
    saved = json.loads((home / FILE_NAME).read_text())["saved"]
    bob = next(a for a in saved if a["name"] == BOB)
    assert bob["credentials"]["refresh_token"] == rotated["refresh_token"]  # the newest, not the used one
    assert portal(home, idp, "switch", BOB).returncode == 0
    refresh = two.post("/refresh", data={"csrf_token": page_csrf(two)})
    assert refresh.status_code == 303 and "Access token refreshed" in two.get("/").text
    refresh_with_codex(home, f"{idp.issuer}/token")
    assert invalid_grants(idp) == errors
    assert login_status(home) == (0, "Logged in using ChatGPT")


def test_two_processes_switching_at_once_end_in_one_consistent_state(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda name=name: results.append(portal(home, idp, "switch", name)))
        for name in (ALICE, BOB, ALICE, BOB)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(done.returncode == 0 for done in results), [d.stderr for d in results]
    listed = accounts(home, idp)
    assert sorted(a["name"] for a in listed) == [ALICE, BOB] and sum(a["active"] for a in listed) == 1
    name = active(home, idp)
    assert account_id(home) == ("acct-alice" if name == ALICE else "acct-bob")
    assert read_auth_json(home)["tokens"]["refresh_token"] == auth_table(home)["refresh_token"]


def test_removing_a_saved_account_asks_first_then_revokes_it(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    before = revocations(idp)
    ask = two.post("/accounts/remove", data={"csrf_token": page_csrf(two), "name": ALICE})
    assert ask.status_code == 200 and "Remove alice@example.test" in ask.text
    assert [a["name"] for a in accounts(home, idp)] == [BOB, ALICE]  # nothing yet
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', ask.text)
    assert csrf
    done = two.post("/accounts/remove", data={"csrf_token": csrf.group(1), "name": ALICE, "confirm": "yes"})
    assert done.status_code == 303 and "Removed alice@example.test" in two.get("/").text
    assert [a["name"] for a in accounts(home, idp)] == [BOB]
    assert revocations(idp) == before + 1
    assert account_id(home) == "acct-bob"  # the active account untouched


def test_sign_out_of_the_active_one_leaves_the_others_and_all_signs_out_all(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    done = portal(home, idp, "logout")
    assert done.returncode == 0
    listed = accounts(home, idp)
    assert [(a["name"], a["active"]) for a in listed] == [(ALICE, False)]
    assert login_status(home) == (1, "Not logged in")
    assert portal(home, idp, "switch", ALICE).returncode == 0 and account_id(home) == "acct-alice"
    done = portal(home, idp, "logout", "--all")
    assert done.returncode == 0 and accounts(home, idp) == []
    assert not (home / "auth.json").exists() and not (home / FILE_NAME).exists()


def test_named_accounts_and_a_key_beside_oauth(idp: TestProvider, home: Path, two: httpx2.Client) -> None:
    done = portal(home, idp, "login", "--api-key", "--name", "scripts", stdin=KEY + "\n")
    assert done.returncode == 0, done.stderr
    listed = accounts(home, idp)
    assert [(a["name"], a["active"]) for a in listed] == [("scripts", True), (ALICE, False), (BOB, False)]
    assert listed[0]["api_key_hint"] == "sk-…mnop"
    code, text = login_status(home)
    assert code == 0 and text.startswith("API key configured")
    assert portal(home, idp, "switch", BOB).returncode == 0
    assert [a["name"] for a in accounts(home, idp)][0] == BOB and account_id(home) == "acct-bob"


def test_codex_login_to_another_account_keeps_the_active_one(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    login_with_api_key(home, KEY)
    listed = accounts(home, idp)
    assert listed[0]["active"] and listed[0]["api_key_hint"] == "sk-…mnop"
    assert {a["name"] for a in listed[1:]} == {ALICE, BOB}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("carol@example.test", "no account named carol@example.test; `codex-portal accounts` lists them"),
    ],
)
def test_an_unknown_account_is_one_clear_line(
    idp: TestProvider, home: Path, two: httpx2.Client, name: str, message: str
) -> None:
    before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    done = portal(home, idp, "switch", name)
    assert done.returncode == 1 and done.stderr == f"Error: {message}.\n"
    assert {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()} == before


def test_an_email_of_two_saved_accounts_must_be_named(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    data = json.loads((home / FILE_NAME).read_text())
    alice = data["saved"][0]
    alice["name"] = "work"
    other = {**alice["credentials"], "access_token": "other", "id_token": None}  # another sign-in, same email
    data["saved"].append({"name": "personal", "credentials": other})
    (home / FILE_NAME).write_text(json.dumps(data))
    done = portal(home, idp, "switch", ALICE)
    assert done.returncode == 1
    assert done.stderr == f"Error: {ALICE} is the email of 2 saved accounts (work, personal): use the name.\n"
    assert portal(home, idp, "switch", "work").returncode == 0 and account_id(home) == "acct-alice"


def test_a_damaged_accounts_file_is_named_and_never_overwritten(
    idp: TestProvider, home: Path, two: httpx2.Client
) -> None:
    (home / FILE_NAME).write_text('{"saved": [oops')
    before = (home / FILE_NAME).read_bytes()
    for args in (("accounts",), ("switch", ALICE)):
        done = portal(home, idp, *args)
        assert (
            done.returncode == 1 and str(home / FILE_NAME) in done.stderr and "Traceback" not in done.stderr
        )
        assert len(done.stderr.strip().splitlines()) == 1
    assert (home / FILE_NAME).read_bytes() == before
    assert portal(home, idp, "status").returncode == 0  # the active login is still there
    page = two.get("/")
    assert page.status_code == 200 and "is damaged" in page.text


def test_login_for_one_account_refuses_another(idp: TestProvider, home: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "webapp", "login", "--no-browser", "--port", str(port), "--account", BOB]
    env = {
        "PATH": "/usr/bin:/bin",
        "CODEX_HOME": str(home),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
    }
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert "login_hint=bob%40example.test" in url and "prompt=login" in url
        callback = idp.login_without_browser(url, login="alice")
        page = httpx2.get(callback, timeout=30, follow_redirects=True)  # as a browser would
        assert page.status_code == 400 and "Sign-in did not complete" in page.text
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1
    assert "signed you in as alice@example.test, not bob@example.test; nothing was saved" in stderr
    assert "auth" not in (home / "config.toml").read_text() and not (home / "auth.json").exists()
