"""The portal in a real browser: Debian's Chromium, driven by Playwright, as a person uses it.

The browser signs in on the real OpenID provider's own pages (``idp``), saves an API key and signs
out, with the portal's Content-Security-Policy enforced: a CSP violation shows up as a console error
(asserted) or breaks the journey. Every request the browser makes is recorded: none may leave
loopback. axe-core checks each page the person meets.

axe runs in the journey's own page, CSP and all: axe-playwright-python injects axe-core with
``page.evaluate`` (the DevTools protocol, which the page's CSP does not govern), not with a
``<script>`` tag, so no ``bypass_csp`` context is needed, and axe sees the pages as the person does,
notices included (a second context would share the session but not its one-time notices).

Set ``UPDATE_SCREENSHOTS=1`` to refresh ``docs/status-signed-in.png``; otherwise the screenshot is
taken (so it keeps working) into the test's temporary directory, leaving the checkout untouched.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    Page,
    expect,
)

from tests.browser import LOOPBACK, assert_accessible, watch
from tests.conftest import free_port
from tests.idp import TestProvider
from tests.portal import PortalServer, settings_for

DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-signed-in.png"
USER_FILE = (
    "# Codex CLI settings, edited by hand\n"
    'model = "o3"  # the default model\n'
    'approval_policy = "on-request"\n'
    "\n"
    "[tools]\n"
    "web_search = true  # keep me\n"
    "\n"
    "[mcp_servers.docs]\n"
    'command = "npx"\n'
    'args = ["-y", "docs-server"]\n'
)
API_KEY = "sk-test-0123456789abcdefwxyz"
SECRETS_IN_URLS = ("code=", "state=", "token=")


# ---- the browser: Debian's Chromium, loopback only (fixtures in conftest.py) ----------------
def _styled(page: Page) -> None:
    """Wait for the page's stylesheet: the DOM can be there (and pass `expect`) before it applies."""
    page.wait_for_load_state("load")


def _assert_no_horizontal_scroll(page: Page, width: int) -> None:
    _styled(page)
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate(
        """width => [...document.querySelectorAll("body *")]
            .map(e => [e, Math.round(e.getBoundingClientRect().right)])
            .filter(([e, right]) => right > width)
            .map(([e, right]) => `<${e.localName} class="${e.className}"> right=${right}: `
                + e.textContent.trim().slice(0, 60))""",
        width,
    )
    assert scroll_width <= width, f"{page.url} scrolls sideways ({scroll_width} px); too wide: {wide}"


# ---- the portal --------------------------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    config = tmp_path / "codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(USER_FILE)
    return config


@pytest.fixture
def portal(idp: TestProvider, config_file: Path) -> Iterator[PortalServer]:
    settings = settings_for(idp, config_file)
    with PortalServer(settings, launch_token=secrets.token_urlsafe(32)) as server:
        yield server


def _auth(config_file: Path) -> dict[str, Any]:
    text = config_file.read_text()
    assert text.startswith(USER_FILE), "the user's own lines changed"
    rest = tomllib.loads(text[len(USER_FILE) :])
    assert set(rest) == {"auth"}, f"only [auth] may follow the user's lines: {text[len(USER_FILE) :]!r}"
    return dict(rest["auth"])


# ---- the tests ---------------------------------------------------------------------------------
def test_a_person_signs_in_saves_a_key_and_signs_out(
    browser: Browser, idp: TestProvider, portal: PortalServer, config_file: Path, tmp_path: Path
) -> None:
    home = f"{portal.base_url}/"
    context = browser.new_context(viewport={"width": 1000, "height": 800})  # CSP enforced
    watched = watch(context.new_page(), whole_context=True)
    page = watched.page
    try:
        # 1. The link from the terminal opens the status page; the token leaves the address bar.
        response = page.goto(portal.launch_url)
        expect(page).to_have_url(home)
        expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
        assert response is not None and response.url == home
        assert "script-src 'self'" in (response.header_value("content-security-policy") or "")
        assert_accessible(page, "the status page, signed out")

        # 2. Sign in on the provider's own pages, and come back signed in.
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page).to_have_url(re.compile(rf"^{re.escape(idp.issuer)}/interaction/"))
        expect(page.get_by_role("heading", name="Sign-in")).to_be_visible()
        page.locator('input[name="login"]').fill("alice")
        page.locator('input[name="password"]').fill("any password at all")
        page.get_by_role("button", name="Sign-in", exact=True).click()
        expect(page.get_by_role("heading", name="Authorize")).to_be_visible()
        before_callback = len(watched.navigations)
        page.get_by_role("button", name="Continue", exact=True).click()
        expect(page).to_have_url(home)
        expect(page.get_by_role("heading", level=1)).to_have_text("Signed in")
        expect(page.get_by_role("status")).to_contain_text("Signed in as alice@example.test")

        # The callback (it carries the code) was only ever a redirect, never a page to see or go back to.
        callbacks = [r for r in watched.requests if urlsplit(r.url).path == "/auth/callback"]
        assert len(callbacks) == 1 and "code=" in callbacks[0].url
        redirected_to = callbacks[0].redirected_to
        assert redirected_to is not None and redirected_to.url == home
        assert watched.navigations[before_callback:] == [home]
        history = watched.history()
        assert history[-1] == home
        assert not [url for url in history if any(part in url for part in SECRETS_IN_URLS)], history

        auth = _auth(config_file)
        assert set(auth) == {"access_token", "refresh_token", "expires_at", "id_token", "issuer", "client_id"}
        assert isinstance(auth["expires_at"], int)
        assert auth["issuer"] == idp.issuer and auth["client_id"] == idp.client_id
        shown = page.content()
        for name in ("access_token", "refresh_token", "id_token"):
            assert str(auth[name]) not in shown, f"the page shows the {name}"
        assert_accessible(page, "the status page, signed in")

        # 3. The picture of the signed-in status page.
        shot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "signed-in.png"
        _styled(page)
        page.screenshot(path=shot, full_page=True)
        assert shot.stat().st_size > 0

        # 4. An API key instead: the page shows only its last four characters.
        page.get_by_label("API key", exact=True).fill(API_KEY)
        page.get_by_role("button", name="Save API key").click()
        expect(page).to_have_url(home)
        expect(page.get_by_role("status")).to_contain_text("sk-…wxyz")
        expect(page.locator("main")).to_contain_text("sk-…wxyz")
        expect(page.locator("body")).not_to_contain_text(API_KEY)
        assert API_KEY not in page.content()
        assert _auth(config_file) == {"api_key": API_KEY}
        assert_accessible(page, "the status page, with an API key and its notice")

        # The sign-out confirmation page (GET /logout), then back with its Cancel link.
        page.goto(f"{portal.base_url}/logout")
        expect(page.get_by_role("heading", level=1)).to_have_text("Sign out")
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        assert_accessible(page, "the sign-out confirmation page, signed in")
        page.get_by_role("link", name="Cancel").click()
        expect(page).to_have_url(home)
        assert _auth(config_file) == {"api_key": API_KEY}

        # 5. Sign out: the user's file is exactly as it was.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(home)
        expect(page.get_by_role("status")).to_contain_text("Signed out")
        expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
        assert config_file.read_bytes() == USER_FILE.encode()
        assert_accessible(page, "the status page, signed out, with its notice")
        page.goto(f"{portal.base_url}/logout")
        expect(page.get_by_text("You are not signed in.")).to_be_visible()
        assert_accessible(page, "the sign-out page, signed out")

        # 6. Nothing left loopback, nothing broke the portal's pages, no secret in the history.
        assert watched.hosts() <= LOOPBACK, sorted(watched.hosts())
        assert watched.requests
        # (The provider's pages are not ours: their missing /favicon.ico logs a 404.)
        assert not watched.errors(except_from=idp.issuer)
        history = watched.history()
        assert not [url for url in history if any(part in url for part in SECRETS_IN_URLS)], history
    finally:
        context.close()


def test_dark_mode_on_a_phone_has_no_horizontal_scroll(
    browser: Browser, idp: TestProvider, portal: PortalServer, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, color_scheme="dark")
    watched = watch(context.new_page(), whole_context=True)
    page = watched.page
    try:
        page.goto(portal.launch_url)
        expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)", "the dark palette is not applied"
        _assert_no_horizontal_scroll(page, 360)
        assert_accessible(page, "the status page in dark mode, 360 px wide")
        page.screenshot(path=tmp_path / "dark-360-signed-out.png", full_page=True)

        page.get_by_label("API key", exact=True).fill(API_KEY)
        page.get_by_role("button", name="Save API key").click()
        expect(page.get_by_role("status")).to_contain_text("sk-…wxyz")
        _assert_no_horizontal_scroll(page, 360)
        assert_accessible(page, "the status page in dark mode, 360 px wide, with an API key")
        page.screenshot(path=tmp_path / "dark-360-api-key.png", full_page=True)

        assert watched.hosts() <= LOOPBACK, sorted(watched.hosts())
        assert not watched.errors(except_from=idp.issuer)
    finally:
        context.close()


def test_the_one_shot_login_ends_on_a_whole_page(browser: Browser, idp: TestProvider, tmp_path: Path) -> None:
    """`codex-portal login` stops its server once the outcome is shown: the browser's last page
    must come whole in that one answer, styled, with nothing left to fetch from a server that is
    gone (its stylesheet was refused in 2 of 7 runs), and the server must wait for it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "SSH_", "BROWSER"))}
    env |= {"CODEX_HOME": str(tmp_path / "codex"), "CODEX_PORTAL_ISSUER": idp.issuer}
    env["CODEX_PORTAL_CLIENT_ID"] = idp.client_id
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--no-browser", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    context = browser.new_context()
    page = context.new_page()
    watched = watch(page)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
    try:
        assert proc.stdout is not None
        page.goto(proc.stdout.readline().strip())
        page.locator('input[name="login"]').fill("alice")
        page.locator('input[name="password"]').fill("any password")
        page.get_by_role("button", name="Sign-in", exact=True).click()
        page.get_by_role("button", name="Continue", exact=True).click()
        expect(page.get_by_role("heading", name="Sign-in complete")).to_be_visible()
        _, err = proc.communicate(timeout=30)
        _styled(page)
        notice = page.get_by_role("status")
        expect(notice).to_have_text(re.compile(r"^Signed in as alice@example\.test\."))
        styles = notice.evaluate("e => [getComputedStyle(e).borderTopStyle, getComputedStyle(e).paddingTop]")
        if os.environ.get("UPDATE_SCREENSHOTS"):
            page.screenshot(path=str(DOCS_SCREENSHOT.parent / "screenshots" / "login-done-light-wide.png"))
    finally:
        context.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, err
    assert styles != ["none", "0px"] and styles[0] == "solid", styles  # portal.css applies
    here = [urlsplit(request.url).path for request in watched.requests if urlsplit(request.url).port == port]
    assert here == ["/auth/callback", "/auth/done"], here  # the page needed nothing else
    errors = watched.errors(except_from=idp.issuer)  # (the provider's pages have no favicon)
    assert failed == [] and errors == [], (failed, errors)  # and the CSP allows the inline style
