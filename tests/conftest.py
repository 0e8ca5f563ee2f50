from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from starlette.testclient import TestClient

from tests.browser import launch_chromium
from tests.idp import TestProvider
from webapp.app import create_app
from webapp.settings import Settings

LAUNCH_TOKEN = "launch-token-for-tests-0123456789abcdef"
PORT = 1455


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "codex" / "config.toml"


@pytest.fixture
def settings(config_path: Path) -> Settings:
    # An issuer nobody listens on: unit tests never reach a provider by accident.
    return Settings(
        config_path=config_path, issuer="http://127.0.0.1:9", port=PORT, open_browser=False, timeout=2
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, launch_token=LAUNCH_TOKEN)
    with TestClient(app, base_url=f"http://127.0.0.1:{PORT}", follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def browser_client(client: TestClient) -> TestClient:
    """A client holding the session that the launch URL opens."""
    response = client.get(f"/?token={LAUNCH_TOKEN}")
    assert response.status_code == 303
    return client


def csrf_token(client: TestClient) -> str:
    page = client.get("/").text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


@pytest.fixture(scope="session")
def idp() -> Iterator[TestProvider]:
    """The real OpenID provider (npm oidc-provider) on loopback, shared by the session."""
    with TestProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, loopback only (modules whose `browser` is an HTTP client override it)."""
    chromium = launch_chromium(playwright)
    yield chromium
    chromium.close()
