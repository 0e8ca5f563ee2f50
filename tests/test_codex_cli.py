"""The harness for the real Codex CLI (tests/codex_cli.py), proved against the binary itself.

No project code: the binary pinned in tests/codex (`make codex`), the test provider, plain httpx2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest

import tests.codex_cli
from tests.codex_cli import (
    CODEX_CLIENT_ID,
    CODEX_SCOPE,
    CODEX_VERSION,
    OPENAI_AUTH_CLAIM,
    CodexCliError,
    chatgpt_id_token,
    codex_provider,
    jwt_claims,
    login_status,
    login_with_api_key,
    logout,
    read_auth_json,
    realistic_config,
    refresh_with_codex,
    run_codex,
    write_auth_json,
)
from tests.idp import TestProvider

API_KEY = "sk-test-abcdefghijklmnop"
# Below the CLI's 5-minute window: it refreshes on every run, at once.
ACCESS_TOKEN_TTL = 290


@pytest.fixture
def codex_home(tmp_path: Path) -> Path:
    return tmp_path / ".codex"


@pytest.fixture(scope="module")
def codex_idp() -> Iterator[TestProvider]:
    """The test provider as the Codex CLI needs it: its client id, its claim, JWT access tokens."""
    with codex_provider(ACCESS_TOKEN_TTL).start() as provider:
        yield provider


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_pinned_version(codex_home: Path) -> None:
    done = run_codex(codex_home, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"codex-cli {CODEX_VERSION}"
    assert "PATH aliases" not in done.stderr  # the harmless warning under /tmp is filtered


def test_an_empty_home_is_not_logged_in(codex_home: Path) -> None:
    assert login_status(codex_home) == (1, "Not logged in")
    assert not (codex_home / "auth.json").exists()


def test_login_with_an_api_key(codex_home: Path) -> None:
    login_with_api_key(codex_home, API_KEY)
    code, text = login_status(codex_home)
    assert code == 0 and text.startswith("API key configured - sk-test-***lmnop"), text
    auth = codex_home / "auth.json"
    assert read_auth_json(codex_home) == {"auth_mode": "apikey", "OPENAI_API_KEY": API_KEY}
    assert mode(auth) == 0o600
    # its two lock files: auth.lock is world-readable (hence CODEX_HOME 0700, SPEC section 7)
    assert mode(codex_home / "auth.lock") == 0o644 and mode(codex_home / "auth.json.lock") == 0o600


def test_logout_deletes_auth_json(codex_home: Path) -> None:
    login_with_api_key(codex_home, API_KEY)
    done = logout(codex_home)
    assert done.returncode == 0 and "Successfully logged out" in done.stderr
    assert not (codex_home / "auth.json").exists()
    assert login_status(codex_home) == (1, "Not logged in")
    assert logout(codex_home).returncode == 0  # nobody logged in: still 0


def test_a_hand_made_chatgpt_login_is_accepted(codex_home: Path) -> None:
    written = write_auth_json(codex_home)
    assert written["tokens"]["account_id"] == "acct-alice"
    assert jwt_claims(written["tokens"]["id_token"])["email"] == "alice@example.test"
    assert mode(codex_home / "auth.json") == 0o600
    assert login_status(codex_home) == (0, "Logged in using ChatGPT")


def test_a_hand_made_api_key_login_is_accepted(codex_home: Path) -> None:
    write_auth_json(codex_home, api_key=API_KEY)
    code, text = login_status(codex_home)
    assert code == 0 and text.startswith("API key configured - sk-test-***lmnop"), text


def test_an_id_token_without_the_openai_claim_is_still_a_login(codex_home: Path) -> None:
    written = write_auth_json(codex_home, id_token=chatgpt_id_token(account_id=None))
    assert written["tokens"]["account_id"] is None
    assert login_status(codex_home) == (0, "Logged in using ChatGPT")


def test_an_id_token_that_is_not_a_jwt_breaks_the_file(codex_home: Path) -> None:
    write_auth_json(codex_home, id_token="not-a-jwt")
    code, text = login_status(codex_home)
    assert code == 1 and "failed to deserialize CLI auth" in text, text


def test_the_realistic_config_is_accepted(codex_home: Path) -> None:
    text = realistic_config(codex_home / "config.toml")
    assert 'model = "gpt-5"' in text and "[mcp_servers.x]" in text and "trust_level" in text
    write_auth_json(codex_home)
    assert login_status(codex_home) == (0, "Logged in using ChatGPT")
    # the config is really read: `model` as a table is refused
    (codex_home / "config.toml").write_text('[model]\nname = "gpt-5"\n')
    code, text = login_status(codex_home)
    assert code == 1 and "invalid type: map, expected a string" in text, text


def test_a_missing_binary_says_to_run_make_codex(monkeypatch: pytest.MonkeyPatch, codex_home: Path) -> None:
    monkeypatch.setattr(tests.codex_cli, "CODEX_BIN", codex_home / "no" / "codex")
    with pytest.raises(CodexCliError, match="make codex"):
        login_status(codex_home)
    with pytest.raises(CodexCliError, match="make codex"):
        refresh_with_codex(codex_home, "http://127.0.0.1:9/token")


def test_refresh_with_codex_says_why_nothing_changed(codex_home: Path) -> None:
    with pytest.raises(CodexCliError, match="does not exist"):
        refresh_with_codex(codex_home, "http://127.0.0.1:9/token")
    write_auth_json(codex_home)
    (codex_home / "config.toml").write_text('[model]\nname = "gpt-5"\n')  # it exits at once
    with pytest.raises(CodexCliError, match=r"(?s)did not rewrite .*exited with code 1.*expected a string"):
        refresh_with_codex(codex_home, "http://127.0.0.1:9/token", timeout=20)


# ---- a real refresh: the Codex CLI at the test provider ----------------------------------------------
def sign_in(idp: TestProvider, login: str = "alice") -> dict[str, Any]:
    """What `codex login` gets: the authorization code flow with PKCE, the Codex CLI's client and scope."""
    with httpx2.Client(trust_env=False, timeout=10) as http:
        discovery = http.get(f"{idp.issuer}/.well-known/openid-configuration").json()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        redirect_uri = "http://localhost:1455/auth/callback"
        state = secrets.token_urlsafe(16)
        query = {
            "response_type": "code",
            "client_id": idp.client_id,
            "redirect_uri": redirect_uri,
            "scope": CODEX_SCOPE,
            "state": state,
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
        }
        location = idp.login_without_browser(
            f"{discovery['authorization_endpoint']}?{urlencode(query)}", login=login
        )
        params = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
        assert params["state"] == state, location
        response = http.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": redirect_uri,
                "client_id": idp.client_id,
                "code_verifier": verifier,
            },
        )
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens


def invalid_grants(idp: TestProvider) -> list[dict[str, Any]]:
    return [event for event in idp.events("grant.error") if event.get("error") == "invalid_grant"]


def test_the_codex_cli_refreshes_at_the_test_provider(codex_home: Path, codex_idp: TestProvider) -> None:
    tokens = sign_in(codex_idp)
    assert jwt_claims(tokens["access_token"])["exp"] - time.time() < 300  # inside the CLI's window
    write_auth_json(
        codex_home,
        id_token=tokens["id_token"],
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        extra={"portal_note": "a key the Codex CLI does not know"},
    )
    assert login_status(codex_home) == (0, "Logged in using ChatGPT")
    grant_id = codex_idp.events("grant.success")[-1]["grant_id"]
    errors_before = len(invalid_grants(codex_idp))
    token_url = f"{codex_idp.issuer}/token"

    started = time.monotonic()
    refreshed = refresh_with_codex(codex_home, token_url)
    assert time.monotonic() - started < 15

    new = refreshed["tokens"]
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert jwt_claims(new["access_token"])["exp"] >= jwt_claims(tokens["access_token"])["exp"]
    assert new["account_id"] == "acct-alice"
    assert jwt_claims(new["id_token"])[OPENAI_AUTH_CLAIM]["chatgpt_account_id"] == "acct-alice"
    # What it writes: exactly these keys (unknown ones are dropped), 0600, last_refresh in nanoseconds.
    assert list(refreshed) == ["auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh"]
    assert list(new) == ["id_token", "access_token", "refresh_token", "account_id"]
    assert refreshed["auth_mode"] == "chatgpt" and refreshed["OPENAI_API_KEY"] is None
    assert len(refreshed["last_refresh"]) == len("2026-12-05T06:50:09.981602123Z")
    assert mode(codex_home / "auth.json") == 0o600
    assert json.loads((codex_home / "auth.json").read_text()) == refreshed

    refreshes = [e for e in codex_idp.events("grant.success") if e["grant_id"] == grant_id and e["refresh"]]
    assert len(refreshes) == 1
    assert refreshes[0]["client_id"] == CODEX_CLIENT_ID and refreshes[0]["rotated"] is True
    assert len(invalid_grants(codex_idp)) == errors_before

    # A second run refreshes again with the rotated token (never the used one).
    again = refresh_with_codex(codex_home, token_url)
    assert again["tokens"]["refresh_token"] not in (tokens["refresh_token"], new["refresh_token"])
    refreshes = [e for e in codex_idp.events("grant.success") if e["grant_id"] == grant_id and e["refresh"]]
    assert len(refreshes) == 2
    assert len(invalid_grants(codex_idp)) == errors_before
    assert login_status(codex_home) == (0, "Logged in using ChatGPT")
