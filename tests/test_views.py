from __future__ import annotations

import re
import tomllib
from pathlib import Path

from starlette.testclient import TestClient

from tests.conftest import csrf_token

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123wxyz"


def test_status_page_signed_out(browser_client: TestClient, config_path: Path) -> None:
    page = browser_client.get("/")
    assert page.status_code == 200
    assert "Not signed in" in page.text
    assert str(config_path) in page.text
    for name in ("Sign in", "Save API key"):
        assert f">{name}</button>" in page.text
    assert '<label for="api_key">API key</label>' in page.text


def test_api_key_is_saved_masked_and_signed_out(browser_client: TestClient, config_path: Path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text('# mine\nmodel = "o3"\n')
    response = browser_client.post(
        "/api-key", data={"csrf_token": csrf_token(browser_client), "api_key": f"  {KEY}\n"}
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert tomllib.loads(config_path.read_text())["auth"] == {"api_key": KEY}
    assert config_path.read_text().startswith('# mine\nmodel = "o3"\n')
    page = browser_client.get("/").text
    assert "sk-…wxyz" in page and KEY not in page
    assert "API key sk-…wxyz saved" in page
    assert ">Sign out</button>" in page
    status = browser_client.get("/api/status").json()
    assert status["method"] == "api_key" and status["api_key_hint"] == "sk-…wxyz"

    confirm = browser_client.get("/logout")
    assert confirm.status_code == 200 and ">Sign out</button>" in confirm.text
    response = browser_client.post("/logout", data={"csrf_token": csrf_token(browser_client)})
    assert response.status_code == 303
    assert config_path.read_text() == '# mine\nmodel = "o3"\n'
    assert "Signed out" in browser_client.get("/").text


def test_bad_api_key_is_refused_at_the_top_and_under_the_field(
    browser_client: TestClient, config_path: Path
) -> None:
    for bad in ("", "   ", "sk-abc\n[evil]", "sk-\u202eabc", "k" * 600, "sk-a\x00b"):
        response = browser_client.post(
            "/api-key", data={"csrf_token": csrf_token(browser_client), "api_key": bad}
        )
        assert response.status_code == 303 and response.headers["location"] == "/", (
            bad
        )  # a reload posts nothing
        page = browser_client.get("/").text
        assert 'role="alert"' in page and '<a href="#api_key">Correct it below.</a>' in page
        assert 'aria-invalid="true" aria-describedby="api_key_error"' in page
        assert "[evil]" not in page
        assert 'aria-invalid="true"' not in browser_client.get("/").text  # shown once
    assert not config_path.exists()


def test_status_api(browser_client: TestClient, config_path: Path) -> None:
    assert browser_client.get("/api/status").json() == {
        "signed_in": False,
        "method": None,
        "expires_at": None,
        "expired": False,
        "email": None,
        "api_key_hint": None,
        "config_path": str(config_path),
        "codex_cli": {
            "store": "file",
            "path": str(config_path.parent / "auth.json"),
            "signed_in": False,
            "in_sync": True,
        },
    }


def test_corrupt_config_is_reported_not_overwritten(browser_client: TestClient, config_path: Path) -> None:
    config_path.parent.mkdir(parents=True)
    config_path.write_text("[auth\napi_key = 1\n")
    page = browser_client.get("/")
    assert page.status_code == 200
    assert re.search(r"not valid TOML.*line 1", page.text)
    response = browser_client.post(
        "/api-key", data={"csrf_token": csrf_token(browser_client), "api_key": KEY}
    )
    assert response.status_code == 500
    assert str(config_path) in response.text and KEY not in response.text
    assert config_path.read_text() == "[auth\napi_key = 1\n"


def test_callback_without_pending_sign_in_changes_nothing(client: TestClient, config_path: Path) -> None:
    for query in ("", "?state=unknown&code=abc", "?code=abc", "?state=&error=access_denied"):
        response = client.get(f"/auth/callback{query}")
        assert response.status_code == 400
        assert "unknown, was already completed, or has expired" in response.text
    assert not config_path.exists()


def test_sign_in_with_unreachable_provider_says_so(browser_client: TestClient) -> None:
    response = browser_client.post("/login", data={"csrf_token": csrf_token(browser_client)})
    assert response.status_code == 502
    assert "Could not discover the endpoints of http://127.0.0.1:9" in response.text


def test_sign_in_with_a_code_says_why_it_is_unavailable(browser_client: TestClient) -> None:
    from webapp.provider import ProviderMetadata

    portal = browser_client.app.state.portal  # type: ignore[attr-defined]
    portal.metadata = ProviderMetadata(
        issuer="http://127.0.0.1:9", authorization_endpoint="a", token_endpoint="t"
    )
    # No RFC 8628 endpoint: the Codex CLI's device protocol may still answer, so the button works
    # until the issuer has said (404) that it does not.
    assert "disabled" not in browser_client.get("/").text
    portal.device_unavailable = True
    page = browser_client.get("/").text
    assert re.search(
        r'class="secondary" disabled aria-describedby="device-note">\s*Sign in with a code',
        page,
    )
    assert re.search(r"offers no device\s+authorization endpoint", page)
    portal.device_unavailable = False
    portal.metadata = ProviderMetadata(
        issuer="http://127.0.0.1:9",
        authorization_endpoint="a",
        token_endpoint="t",
        device_authorization_endpoint="d",
    )
    assert "disabled" not in browser_client.get("/").text
