"""Every flow against the real OpenID provider, through the real HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import free_port
from tests.idp import TestProvider
from tests.portal import PortalServer, page_csrf, settings_for, sign_in
from webapp.server import FAREWELL
from webapp.settings import Settings

LAUNCH = "flow-launch-token-0123456789abcdefghij"
USER_FILE = '# my settings\nmodel = "o3"\n\n[tools]\nweb_search = true  # keep me\n'


@pytest.fixture
def portal_settings(idp: TestProvider, tmp_path: Path) -> Settings:
    config = tmp_path / "home" / "config.toml"
    config.parent.mkdir()
    config.write_text(USER_FILE)
    return settings_for(idp, config)


@pytest.fixture
def portal(portal_settings: Settings) -> Iterator[PortalServer]:
    with PortalServer(portal_settings, launch_token=LAUNCH) as server:
        yield server


@pytest.fixture
def browser(portal: PortalServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=portal.base_url, follow_redirects=False, timeout=20) as client:
        assert client.get(f"/?token={LAUNCH}").status_code == 303
        yield client


def _auth(path: Path) -> dict[str, object]:
    return dict(tomllib.loads(path.read_text()).get("auth", {}))


def test_browser_sign_in_saves_tokens_and_keeps_the_file(
    idp: TestProvider, browser: httpx2.Client, portal_settings: Settings
) -> None:
    done = sign_in(idp, browser)
    assert done.status_code == 303 and done.headers["location"] == "/"  # the code leaves the address bar
    auth = _auth(portal_settings.config_path)
    assert set(auth) == {"access_token", "refresh_token", "expires_at", "id_token", "issuer", "client_id"}
    assert isinstance(auth["expires_at"], int) and auth["issuer"] == idp.issuer
    assert auth["client_id"] == idp.client_id
    text = portal_settings.config_path.read_text()
    assert text.startswith(USER_FILE)
    assert oct(portal_settings.config_path.stat().st_mode & 0o777) == "0o600"
    page = browser.get("/").text
    assert "Signed in as alice@example.test" in page
    assert str(auth["access_token"]) not in page and str(auth["refresh_token"]) not in page
    status = browser.get("/api/status").json()
    assert status["signed_in"] and status["method"] == "oauth" and status["email"] == "alice@example.test"
    assert status["expires_at"] == auth["expires_at"] and status["expired"] is False


def test_callback_is_one_time(idp: TestProvider, browser: httpx2.Client, portal_settings: Settings) -> None:
    start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
    callback = idp.login_without_browser(start.headers["location"])
    assert browser.get(callback).status_code == 303
    saved = portal_settings.config_path.read_text()
    replay = browser.get(callback)
    assert replay.status_code == 400 and "already completed" in replay.text
    assert portal_settings.config_path.read_text() == saved
    assert len(idp.events("grant.success")) >= 1


def test_provider_refusal_changes_nothing(
    idp: TestProvider, browser: httpx2.Client, portal_settings: Settings
) -> None:
    start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
    callback = idp.login_without_browser(start.headers["location"], approve=False)
    response = browser.get(callback)
    assert response.status_code == 303
    assert "access_denied" in browser.get("/").text
    assert portal_settings.config_path.read_text() == USER_FILE


def _refresh_status(idp: TestProvider, refresh_token: str) -> tuple[int, str]:
    """What the provider says to this refresh token now (it rotates: use it only to test a dead one)."""
    answer = httpx2.post(
        f"{idp.issuer}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": idp.client_id},
    )
    return answer.status_code, str(answer.json().get("error", ""))


def test_sign_in_again_revokes_the_old_refresh_token_after_saving(
    idp: TestProvider, browser: httpx2.Client, portal_settings: Settings
) -> None:
    sign_in(idp, browser)
    old = _auth(portal_settings.config_path)
    sign_in(idp, browser)  # the same account again: the old sign-in is replaced and revoked
    new = _auth(portal_settings.config_path)
    assert new["refresh_token"] != old["refresh_token"]
    assert "Signed in as alice@example.test" in browser.get("/").text
    assert _refresh_status(idp, str(old["refresh_token"])) == (400, "invalid_grant")


def test_sign_in_to_another_account_keeps_the_first_one(
    idp: TestProvider, browser: httpx2.Client, portal_settings: Settings
) -> None:
    sign_in(idp, browser)
    before = len(idp.events("revocation.success"))
    sign_in(idp, browser, login="bob")
    assert "Signed in as bob@example.test" in browser.get("/").text
    assert len(idp.events("revocation.success")) == before  # alice's sign-in is kept, not revoked
    assert "Switch to alice@example.test" in browser.get("/").text


def test_sign_out_revokes_and_removes_auth(
    idp: TestProvider, browser: httpx2.Client, portal_settings: Settings
) -> None:
    sign_in(idp, browser)
    refresh_token = _auth(portal_settings.config_path)["refresh_token"]
    before = len(idp.events("revocation.success"))
    response = browser.post("/logout", data={"csrf_token": page_csrf(browser)})
    assert response.status_code == 303
    assert portal_settings.config_path.read_text() == USER_FILE
    assert len(idp.events("revocation.success")) == before + 1
    assert "Signed out" in browser.get("/").text
    introspect = httpx2.post(
        f"{idp.issuer}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": idp.client_id},
    )
    assert introspect.json()["error"] == "invalid_grant"


def test_email_from_userinfo_when_the_id_token_has_none(tmp_path: Path) -> None:
    with TestProvider(email_in_id_token=False) as idp:
        settings = settings_for(idp, tmp_path / "config.toml")
        with (
            PortalServer(settings, launch_token=LAUNCH) as server,
            httpx2.Client(base_url=server.base_url) as browser,
        ):
            browser.get(f"/?token={LAUNCH}", follow_redirects=False)
            sign_in(idp, browser)
            assert "Signed in as alice@example.test" in browser.get("/").text


def _cli_env(idp: TestProvider, home: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "CODEX_HOME": str(home),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
        "CODEX_PORTAL_PORT": str(port),
    }


def test_cli_login_status_logout(idp: TestProvider, tmp_path: Path) -> None:
    home = tmp_path / "codex"
    port = free_port()
    env = _cli_env(idp, home, port)
    cli = [sys.executable, "-m", "webapp"]
    proc = subprocess.Popen(
        [*cli, "login", "--no-browser"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith(idp.issuer)
    callback = idp.login_without_browser(url)
    done = httpx2.get(callback, follow_redirects=True)
    assert done.status_code == 200 and "Sign-in complete" in done.text
    assert "code=" not in str(done.url)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err.splitlines()[0] == "To sign in, open this link in your browser:"
    assert "Signed in as alice@example.test" in err
    assert "Traceback" not in err and "GET /" not in err  # a one-shot sign-in logs no requests

    status = subprocess.run([*cli, "status", "--json"], env=env, capture_output=True, text=True)
    assert status.returncode == 0
    assert '"method": "oauth"' in status.stdout and '"email": "alice@example.test"' in status.stdout
    assert oct((home / "config.toml").stat().st_mode & 0o777) == "0o600"
    assert oct(home.stat().st_mode & 0o777) == "0o700"

    logout = subprocess.run([*cli, "logout"], env=env, capture_output=True, text=True)
    assert logout.returncode == 0 and "Signed out" in logout.stderr
    assert subprocess.run([*cli, "status"], env=env, capture_output=True).returncode == 1
    assert "auth" not in tomllib.loads((home / "config.toml").read_text())


@pytest.mark.parametrize("fetched", [True, False])
def test_cli_login_waits_for_the_browser_to_fetch_its_last_page(
    idp: TestProvider, tmp_path: Path, fetched: bool
) -> None:
    """The callback's answer sends the browser to /auth/done; `login` serves on until that page
    has been fetched (a slow browser here: a new connection a second later), or FAREWELL passed."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--no-browser"],
        env=_cli_env(idp, tmp_path / "codex", port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        callback = idp.login_without_browser(proc.stdout.readline().strip())
        answer = httpx2.get(callback, timeout=20)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/auth/done?result=")
        if fetched:
            time.sleep(1)
            assert proc.poll() is None, "login stopped before its last page was fetched"
            done = httpx2.get(f"http://localhost:{port}{answer.headers['location']}", timeout=20)
            assert done.status_code == 200 and "Sign-in complete" in done.text
        _, err = proc.communicate(timeout=FAREWELL + 20)  # unfetched: it does not wait for ever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, err
    assert err.splitlines()[-1].startswith("Signed in as alice@example.test."), err
