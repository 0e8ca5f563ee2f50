from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.conftest import LAUNCH_TOKEN, PORT, csrf_token
from webapp.app import create_app
from webapp.security import Sessions
from webapp.settings import Settings

ACTIONS = ["/login", "/api-key", "/logout"]
HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        f"evil.example:{PORT}",
        "localhost",
        f"localhost:{PORT + 1}",
        f"127.0.0.2:{PORT}",
        f"localhost.:{PORT}",
        f"0.0.0.0:{PORT}",
        f"2130706433:{PORT}",
        "",
    ],
)
def test_foreign_host_is_refused(client: TestClient, host: str) -> None:
    response = client.get(f"/?token={LAUNCH_TOKEN}", headers={"host": host})
    assert response.status_code == 400
    assert "set-cookie" not in response.headers
    # The launch token was not spent by the refused request.
    assert client.get(f"/?token={LAUNCH_TOKEN}").status_code == 303


@pytest.mark.parametrize(
    "host", [f"localhost:{PORT}", f"127.0.0.1:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"]
)
def test_own_hosts_are_served(client: TestClient, host: str) -> None:
    assert client.get("/static/portal.css", headers={"host": host}).status_code == 200


def test_every_response_carries_the_security_headers(browser_client: TestClient) -> None:
    for response in (
        browser_client.get("/"),
        browser_client.get("/static/portal.css"),
        browser_client.get("/auth/callback?state=nope"),
        browser_client.get("/nowhere"),
        browser_client.get("/", headers={"host": "evil.example"}),
    ):
        for name, value in HEADERS.items():
            assert response.headers[name] == value, (response.url, name)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp


def test_pages_need_the_launch_session(client: TestClient) -> None:
    for path in ("/", "/logout", "/api/status"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "needs the link that codex-portal printed in the terminal" in response.text, path


def test_launch_token_opens_a_session_once_and_leaves_the_address_bar(client: TestClient) -> None:
    response = client.get(f"/?token={LAUNCH_TOKEN}")
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and LAUNCH_TOKEN not in cookie
    assert client.get("/").status_code == 200
    # Spent: another browser (no cookie) cannot use it again.
    client.cookies.clear()
    again = client.get(f"/?token={LAUNCH_TOKEN}")
    assert again.status_code == 403 and "already used" in again.text


def test_wrong_launch_token_is_refused(client: TestClient) -> None:
    assert client.get("/?token=guess").status_code == 403
    assert client.get(f"/?token={LAUNCH_TOKEN}x").status_code == 403
    assert client.get(f"/?token={LAUNCH_TOKEN}").status_code == 303


def test_forged_session_cookie_is_refused(client: TestClient) -> None:
    client.cookies.set(f"codex_portal_{PORT}", "forged")
    assert client.get("/").status_code == 403


@pytest.mark.parametrize("path", ACTIONS)
@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": f"http://localhost:{PORT + 1}"},
    ],
)
def test_cross_origin_posts_are_refused(
    browser_client: TestClient, path: str, headers: dict[str, str]
) -> None:
    token = csrf_token(browser_client)
    response = browser_client.post(path, data={"csrf_token": token, "api_key": "sk-test"}, headers=headers)
    assert response.status_code == 403


@pytest.mark.parametrize("path", ACTIONS)
def test_posts_need_the_csrf_token(browser_client: TestClient, path: str) -> None:
    for data in ({}, {"csrf_token": "wrong"}):
        response = browser_client.post(path, data={**data, "api_key": "sk-test-key-123456789"})
        assert response.status_code == 403
        assert "form has expired" in response.text


@pytest.mark.parametrize("path", ACTIONS)
def test_posts_need_the_session(client: TestClient, path: str) -> None:
    assert client.post(path, data={"csrf_token": "x"}).status_code == 403


def test_get_changes_nothing(browser_client: TestClient) -> None:
    for path in ACTIONS:
        assert browser_client.get(path).status_code in (200, 405)


def test_large_bodies_are_refused(browser_client: TestClient) -> None:
    token = csrf_token(browser_client)
    response = browser_client.post("/api-key", data={"csrf_token": token, "api_key": "k" * 100_000})
    assert response.status_code == 413


def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions("t", clock=lambda: now[0])
    first = sessions.redeem("t")
    assert first is not None and sessions.get(first) is not None
    assert sessions.redeem("t") is None
    now[0] += 13 * 3600
    assert sessions.get(first) is None


def test_the_403_page_says_where_the_link_was_opened(settings: Settings) -> None:
    """Opened on 127.0.0.1, then visited on localhost: the page names where the session is; the
    same address in a browser without the cookie: the link was used, restart for a new one."""
    app = create_app(settings, launch_token=LAUNCH_TOKEN)
    numeric = TestClient(app, base_url=f"http://127.0.0.1:{PORT}", follow_redirects=False)
    named = TestClient(app, base_url=f"http://localhost:{PORT}", follow_redirects=False)
    with numeric, named:
        assert "Open that link in this browser" in named.get("/").text  # nothing opened yet
        assert numeric.get(f"/?token={LAUNCH_TOKEN}").status_code == 303
        elsewhere = named.get("/")
        assert elsewhere.status_code == 403
        assert f"was opened at http://127.0.0.1:{PORT}/" in elsewhere.text
        assert f"(This is http://localhost:{PORT}/.)" in elsewhere.text
        numeric.cookies.clear()
        again = numeric.get("/")
        assert (
            again.status_code == 403
            and "already used" in again.text
            and "Run codex-portal again" in again.text
        )
