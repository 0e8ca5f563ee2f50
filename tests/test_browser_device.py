"""Sign-in with a code (RFC 8628) in a real browser: Debian's Chromium, driven by Playwright.

The portal's device page runs in one browser context, with its Content-Security-Policy enforced; the
person's "other device" is a second, separate context that enters the code on the real provider's
own pages (``idp``). The portal page must notice the end of the sign-in by itself: with JavaScript
(``static/device.js`` polls ``/api/device``) and without it (a ``<noscript>`` meta refresh). Every
request is recorded (none may leave loopback) and the portal's pages may log no console error (a CSP
violation is one). axe-core checks the device page.

Set ``UPDATE_SCREENSHOTS=1`` to refresh ``docs/device-page.png``; otherwise the screenshot goes into
the test's temporary directory, leaving the checkout untouched.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
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

from tests.browser import LOOPBACK, Watched, assert_accessible, watch
from tests.idp import TestProvider
from tests.portal import PortalServer, settings_for

DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "device-page.png"
VIEWPORT = {"width": 1000, "height": 800}
# The portal asks the provider every 5 s (the provider gives no interval): the page follows within
# one poll of the portal plus one of the page (2 s with JavaScript, a 5 s refresh without).
ENDS_WITHIN_MS = 30_000
ENDS_WITHOUT_JS_WITHIN_MS = 20_000


# ---- the browser: Debian's Chromium, loopback only (fixtures in conftest.py) ----------------
def _watch(browser: Browser, **options: Any) -> Watched:
    context = browser.new_context(**options)  # never bypass_csp: the portal's CSP applies
    return watch(context.new_page(), whole_context=True)


# ---- the portal --------------------------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "codex" / "config.toml"


@pytest.fixture
def portal(idp: TestProvider, config_file: Path) -> Iterator[PortalServer]:
    config_file.parent.mkdir()
    settings = settings_for(idp, config_file)
    with PortalServer(settings, launch_token=secrets.token_urlsafe(32)) as server:
        yield server


def _open_device_page(page: Page, portal: PortalServer) -> str:
    """From the launch link to the portal's device page; returns the user code it shows."""
    page.goto(portal.launch_url)
    expect(page).to_have_url(f"{portal.base_url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
    page.get_by_role("button", name="Sign in with a code").click()
    expect(page).to_have_url(f"{portal.base_url}/device")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in with a code")
    code = page.locator("#user-code").inner_text().strip()
    assert re.fullmatch(r"[A-Z0-9-]{4,}", code), code
    return code


def _auth(config_file: Path) -> dict[str, Any]:
    return dict(tomllib.loads(config_file.read_text())["auth"])


# ---- the other device: the provider's own pages --------------------------------------------------
def _enter_code(page: Page, idp: TestProvider, user_code: str, *, url: str | None = None) -> None:
    """Up to the provider's confirmation page: the code typed in at /device, or filled in by `url`
    (``verification_uri_complete``, which skips the code page)."""
    if url is None:
        page.goto(f"{idp.issuer}/device")
        field = page.locator('input[name="user_code"]')
        expect(field).to_have_attribute("placeholder", "Enter code")
        field.fill(user_code)
        page.get_by_role("button", name="Continue", exact=True).click()
    else:
        page.goto(url)
    expect(page.get_by_role("heading", name="Confirm Device")).to_be_visible()
    expect(page.locator("code")).to_have_text(user_code)


def _approve(page: Page, idp: TestProvider, user_code: str, *, url: str | None = None) -> None:
    """Enter the code, confirm, sign in as alice, consent: the provider says "Sign-in Success"."""
    _enter_code(page, idp, user_code, url=url)
    page.get_by_role("button", name="Continue", exact=True).click()
    page.locator('input[name="login"]').fill("alice")
    page.locator('input[name="password"]').fill("any password at all")
    page.get_by_role("button", name="Sign-in", exact=True).click()
    expect(page.get_by_role("heading", name="Authorize")).to_be_visible()
    page.get_by_role("button", name="Continue", exact=True).click()
    expect(page.get_by_role("heading", name="Sign-in Success")).to_be_visible()


def _deny(page: Page, idp: TestProvider, user_code: str) -> None:
    _enter_code(page, idp, user_code)
    page.get_by_role("button", name="[ Abort ]", exact=True).click()
    expect(page.get_by_text("The Sign-in request was interrupted")).to_be_visible()


# ---- the tests ---------------------------------------------------------------------------------
def test_device_sign_in_from_the_page(
    browser: Browser, idp: TestProvider, portal: PortalServer, config_file: Path, tmp_path: Path
) -> None:
    home = f"{portal.base_url}/"
    here = _watch(browser, viewport=VIEWPORT, permissions=["clipboard-read", "clipboard-write"])
    other = _watch(browser, viewport={"width": 400, "height": 800})
    page = here.page
    try:
        started = time.monotonic()
        user_code = _open_device_page(page, portal)
        shown_at = [r for r in here.requests if r.method == "GET" and urlsplit(r.url).path == "/device"]
        response = shown_at[-1].response()
        assert response is not None and response.status == 200
        assert "script-src 'self'" in (response.header_value("content-security-policy") or "")

        # The page as the person sees it: the code, where to enter it, a countdown that runs.
        verification = page.get_by_role("link", name=f"{idp.issuer}/device", exact=True)
        expect(verification).to_have_attribute("href", f"{idp.issuer}/device")
        complete = page.get_by_role("link", name="this link, which has the code filled in")
        expect(complete).to_have_attribute("href", f"{idp.issuer}/device?user_code={user_code}")
        countdown = page.locator("#countdown")
        expect(countdown).to_have_text(re.compile(r"^\d+:\d\d$"))
        shown = countdown.inner_text()
        expect(countdown).not_to_have_text(shown, timeout=2_500)  # device.js runs under the CSP
        # navigator.clipboard exists (localhost is a secure context): device.js shows the button.
        copy_button = page.get_by_role("button", name="Copy code")
        expect(copy_button).to_be_visible()
        assert copy_button.evaluate("button => button.hidden") is False
        expect(page.get_by_role("button", name="Cancel")).to_be_visible()

        # The picture, taken while the page waits (always into the temporary directory, to look at).
        shot = tmp_path / "device-page.png"
        page.wait_for_load_state("load")
        page.screenshot(path=shot, full_page=True)
        assert shot.stat().st_size > 0
        print(f"device page screenshot: {shot}")
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            DOCS_SCREENSHOT.write_bytes(shot.read_bytes())
        assert_accessible(page, "the device page")
        copy_button.click()
        expect(page.locator("#copy-status")).to_have_text("Copied.")
        assert page.evaluate("navigator.clipboard.readText()") == user_code

        # The other device: the provider's own pages, in a context that shares nothing with ours.
        _approve(other.page, idp, user_code)
        approved = time.monotonic()

        # The portal's page notices by itself, and lands on the status page with the notice.
        expect(page).to_have_url(home, timeout=ENDS_WITHIN_MS)
        expect(page.get_by_role("status")).to_contain_text(
            "Signed in as alice@example.test", timeout=ENDS_WITHIN_MS
        )
        expect(page.get_by_role("heading", level=1)).to_have_text("Signed in")
        ended = time.monotonic()
        print(
            f"device sign-in from the page took {ended - started:.1f} s "
            f"({ended - approved:.1f} s after the other device approved)"
        )

        auth = _auth(config_file)
        assert {"access_token", "refresh_token", "expires_at"} <= set(auth), sorted(auth)
        assert isinstance(auth["expires_at"], int)
        assert auth["issuer"] == idp.issuer and auth["client_id"] == idp.client_id

        assert here.hosts() <= LOOPBACK, sorted(here.hosts())
        assert other.hosts() <= LOOPBACK, sorted(other.hosts())
        assert not here.errors(), here.errors()  # only the portal's pages were open here
        assert not other.page_errors
    finally:
        here.context.close()
        other.context.close()


def test_device_sign_in_from_the_cli(browser: Browser, idp: TestProvider, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CODEX_HOME": str(tmp_path),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
    }
    other = _watch(browser, viewport={"width": 400, "height": 800})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--device"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        user_code = proc.stdout.readline().strip()
        assert user_code, proc.stderr.read()
        told: list[str] = []
        while not told or told[-1] != "Waiting...":
            line = proc.stderr.readline()
            assert line, f"the CLI stopped talking: {told}"
            told.append(line.rstrip("\n"))
        assert told[0].startswith(f"On any device, open {idp.issuer}/device and enter this code"), told
        links = [line.removeprefix("Or open ") for line in told if line.startswith("Or open ")]
        assert links == [f"{idp.issuer}/device?user_code={user_code}"], told

        _approve(other.page, idp, user_code, url=links[0])

        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
        assert proc.returncode == 0, err
        assert out == "", out  # only the code goes to stdout
        assert "Signed in as alice@example.test" in err, err
        print(f"device sign-in from the CLI took {took:.1f} s (process start to exit)")

        auth = _auth(tmp_path / "config.toml")
        assert {"access_token", "refresh_token", "expires_at"} <= set(auth), sorted(auth)
        assert isinstance(auth["expires_at"], int)
        assert other.hosts() <= LOOPBACK, sorted(other.hosts())
        assert not other.page_errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        other.context.close()


def test_device_denied_in_the_browser(
    browser: Browser, idp: TestProvider, portal: PortalServer, config_file: Path
) -> None:
    here = _watch(browser, viewport=VIEWPORT)
    other = _watch(browser, viewport={"width": 400, "height": 800})
    page = here.page
    try:
        user_code = _open_device_page(page, portal)
        _deny(other.page, idp, user_code)

        expect(page).to_have_url(f"{portal.base_url}/", timeout=ENDS_WITHIN_MS)
        expect(page.get_by_role("status")).to_contain_text(
            "denied on the other device", timeout=ENDS_WITHIN_MS
        )
        expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
        assert not config_file.exists()
        assert here.hosts() <= LOOPBACK, sorted(here.hosts())
        assert other.hosts() <= LOOPBACK, sorted(other.hosts())
        assert not here.errors(), here.errors()
    finally:
        here.context.close()
        other.context.close()


def test_device_page_without_javascript(
    browser: Browser, idp: TestProvider, portal: PortalServer, config_file: Path
) -> None:
    here = _watch(browser, viewport=VIEWPORT, java_script_enabled=False)
    page = here.page
    try:
        user_code = _open_device_page(page, portal)
        page.wait_for_load_state("load")  # the stylesheet applies: it decides what is visible
        expect(page.locator("#user-code")).to_have_text(user_code)
        expect(page.locator("#user-code")).to_be_visible()
        expect(page.locator("#countdown")).to_have_text(re.compile(r"^\d+:\d\d$"))
        # Without JavaScript there is nothing to copy with: the button (hidden="") must stay hidden.
        # Checked now, asserted last, so that the meta refresh below is tested whatever the outcome.
        copy_button = page.locator("#copy-code")
        copy_shown = copy_button.is_visible()
        copy_display = copy_button.evaluate("button => getComputedStyle(button).display")

        idp.approve_device(user_code)  # the other device, without a browser

        expect(page).to_have_url(f"{portal.base_url}/", timeout=ENDS_WITHOUT_JS_WITHIN_MS)
        expect(page.get_by_role("status")).to_contain_text("Signed in as alice@example.test")
        assert "access_token" in _auth(config_file)
        # The page reloaded itself (the meta refresh) until the sign-in ended.
        reloads = [r for r in here.requests if r.method == "GET" and urlsplit(r.url).path == "/device"]
        assert len(reloads) >= 2, [r.url for r in here.requests]
        assert not [r for r in here.requests if urlsplit(r.url).path == "/api/device"]
        assert here.hosts() <= LOOPBACK, sorted(here.hosts())
        assert not here.errors(), here.errors()
        assert not copy_shown, (
            f"the Copy code button (hidden attribute) shows without JavaScript: display={copy_display}"
        )
    finally:
        here.context.close()
