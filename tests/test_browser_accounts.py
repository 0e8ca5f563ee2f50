"""Two accounts in a real browser (Debian's Chromium, Playwright): a person signs in as alice, adds
bob on the provider's own sign-in page (the portal asks it to show it: prompt=login), switches
back to alice in one click, and removes bob behind a confirmation. axe checks each page; the
picture of the page holding two accounts is the one in README (UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import LOOPBACK, assert_accessible, watch
from tests.idp import TestProvider
from tests.portal import PortalServer, settings_for
from webapp.stores.saved import FILE_NAME

SCREENSHOT = (
    Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "status-accounts-light-wide.png"
)


@pytest.fixture
def portal(idp: TestProvider, tmp_path: Path) -> Iterator[PortalServer]:
    config = tmp_path / "codex" / "config.toml"
    config.parent.mkdir(mode=0o700)
    config.write_text('model = "o3"\n')
    with PortalServer(settings_for(idp, config), launch_token=secrets.token_urlsafe(32)) as server:
        yield server


def _sign_in_on_the_provider(page: Page, idp: TestProvider, login: str) -> None:
    expect(page).to_have_url(re.compile(rf"^{re.escape(idp.issuer)}/interaction/"))
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any password at all")
    page.get_by_role("button", name="Sign-in", exact=True).click()
    page.get_by_role("button", name="Continue", exact=True).click()


def test_a_person_holds_two_accounts_and_moves_between_them(
    browser: Browser, idp: TestProvider, portal: PortalServer, tmp_path: Path
) -> None:
    home = f"{portal.base_url}/"
    codex_home = portal.settings.codex_home
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    watched = watch(context.new_page(), whole_context=True)
    page = watched.page
    try:
        page.goto(portal.launch_url)
        page.get_by_role("button", name="Sign in", exact=True).click()
        _sign_in_on_the_provider(page, idp, "alice")
        expect(page.get_by_role("status")).to_contain_text("Signed in as alice@example.test")

        # Adding bob: the provider shows its sign-in again, although alice's session is open there.
        page.get_by_label("Account name").first.fill("Bob at work")
        page.get_by_role("button", name="Sign in", exact=True).click()
        _sign_in_on_the_provider(page, idp, "bob")
        expect(page).to_have_url(home)
        expect(page.get_by_role("status")).to_contain_text("Signed in as bob@example.test")
        accounts = page.get_by_role("region", name="Accounts")
        expect(accounts).to_contain_text("Bob at work")
        expect(accounts.get_by_role("button", name="Switch to alice@example.test")).to_be_visible()
        assert_accessible(page, "the status page holding two accounts")
        page.wait_for_load_state("load")
        shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "accounts.png"
        page.screenshot(path=shot, full_page=True)

        # One click: alice is active again, bob kept; the Codex CLI's file follows.
        accounts.get_by_role("button", name="Switch to alice@example.test").click()
        expect(page.get_by_role("status")).to_contain_text("Now using alice@example.test")
        auth = json.loads((codex_home / "auth.json").read_text())
        assert auth["tokens"]["refresh_token"] in (codex_home / "config.toml").read_text()
        expect(page.get_by_role("button", name="Switch to Bob at work")).to_be_visible()

        # Remove bob, behind a confirmation.
        page.get_by_role("button", name="Remove Bob at work").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Remove Bob at work")
        assert_accessible(page, "the remove confirmation")
        page.get_by_role("button", name="Remove Bob at work").click()
        expect(page.get_by_role("status")).to_contain_text("Removed Bob at work")
        expect(page.get_by_role("region", name="Accounts")).to_have_count(0)
        saved = json.loads((codex_home / FILE_NAME).read_text())
        assert saved == {"active": "alice@example.test", "saved": []}

        assert watched.hosts() <= LOOPBACK, sorted(watched.hosts())
        assert not watched.errors(except_from=idp.issuer)
    finally:
        context.close()
