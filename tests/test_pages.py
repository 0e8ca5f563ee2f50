"""Every page of the portal, in every state a person meets, light and dark, 360 and 1200 px wide.

One portal (the real server, on loopback, signing in at the real provider ``idp``) serves the
pages; one browser context holds its session (the launch token is one-time) and another never
opened the link (the error and result pages a stranger's browser gets). Each page writes the whole
config file it needs and opens its own tab, with the portal's Content-Security-Policy enforced; the
four variants are then applied to that same tab (``emulate_media`` and ``set_viewport_size``, no
reload: a page that answers a POST or shows a one-time result cannot be opened twice). For every
page and variant:

- the variant applies (the page's background is the light or the dark palette's);
- axe-core, run in the page itself, finds no violations;
- the page does not scroll sideways (``scrollWidth`` is at most the viewport's width);
- keyboard focus is visible: Tab reaches the first button (or link), whose outline is at least
  2 px wide with 3:1 contrast against what surrounds it;
- the tab logs no console error (a CSP violation is one), except Chromium's line for the page's
  own HTTP error status, and throws nothing;
- every request the tab made stayed on loopback.

Screenshots: ``<page>-<light|dark>-<narrow|wide>.png``. The README's set (every page light and
wide, and a few dark and narrow) goes to ``docs/screenshots/`` when ``UPDATE_SCREENSHOTS=1`` is
set; everything else, and everything without that variable, goes to the test's temporary folder.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    expect,
)

from tests.browser import LOOPBACK, Watched, watch
from tests.idp import TestProvider
from tests.portal import PortalServer, settings_for

if TYPE_CHECKING:
    pass

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
NARROW, WIDE, HEIGHT = 360, 1200, 800
BACKGROUND = {"light": "rgb(246, 247, 249)", "dark": "rgb(13, 17, 23)"}  # --bg of static/portal.css
EMAIL = "alice@example.test"
USER_FILE = '# Codex CLI settings\nmodel = "o3"\n\n[tools]\nweb_search = true\n'
API_KEY = "sk-test-0123456789abcdefwxyz"


@dataclass(frozen=True)
class Variant:
    scheme: Literal["light", "dark"]
    width: int

    @property
    def name(self) -> str:
        return f"{self.scheme}-{'narrow' if self.width == NARROW else 'wide'}"


VARIANTS = tuple(Variant(scheme, width) for width in (WIDE, NARROW) for scheme in ("light", "dark"))
# Besides every page in light-wide, the README shows these in dark-narrow.
DOCS_DARK_NARROW = frozenset({"status-signed-in", "device", "error-403"})
NOT_FOR_DOCS: frozenset[str] = frozenset()


def _for_docs(page: str, variant: Variant) -> bool:
    if page not in PAGES or page in NOT_FOR_DOCS:
        return False
    return variant.name == "light-wide" or (variant.name == "dark-narrow" and page in DOCS_DARK_NARROW)


# ---- the browser: Debian's Chromium, loopback only (fixtures in conftest.py) ----------------
@pytest.fixture(scope="module")
def axe() -> Axe:
    return Axe()  # reads axe-core's 570 kB script once


# ---- the portal --------------------------------------------------------------------------------


@dataclass
class Scene:
    """One running portal, a browser context holding its session, and one that never opened its link."""

    server: PortalServer
    session: BrowserContext
    stranger: BrowserContext
    config: Path


def _set_scene(browser: Browser, idp: TestProvider, home: Path, stack: contextlib.ExitStack) -> Scene:
    config = home / ".codex" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    settings = settings_for(idp, config)
    server = PortalServer(settings, launch_token=secrets.token_urlsafe(32))
    server.__enter__()  # (PortalServer's __exit__ is not typed as a context manager's)
    stack.callback(server.__exit__)
    for _ in range(1000):  # the portal discovers the provider as it starts (~20 ms), and signals nothing
        if server.portal.metadata is not None:
            break
        time.sleep(0.01)
    assert server.portal.metadata is not None, "the portal never discovered the provider"
    session = browser.new_context(viewport={"width": WIDE, "height": HEIGHT})  # the CSP applies
    stack.callback(session.close)
    stranger = browser.new_context(viewport={"width": WIDE, "height": HEIGHT})
    stack.callback(stranger.close)
    opener = session.new_page()
    opener.goto(server.launch_url)  # the one-time link: this context now holds the session
    expect(opener).to_have_url(f"{server.base_url}/")
    opener.close()
    return Scene(server, session, stranger, config)


@pytest.fixture(scope="module")
def scene(browser: Browser, idp: TestProvider) -> Iterator[Scene]:
    """Shared by the pages (a portal and a context each cost about half a second under load).

    Each page writes the whole config file it needs and opens its own tab; the session's notices are
    one-time, and every page that causes one also shows it.
    """
    with contextlib.ExitStack() as stack:
        # A home folder with a path of everyday length (/tmp/alice-xxxxxxxx), unlike pytest's tmp_path.
        home = Path(tempfile.mkdtemp(prefix="alice-", dir="/tmp"))
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        yield _set_scene(browser, idp, home, stack)


@dataclass
class Shown:
    """A page on screen, ready for the variants, and the HTTP status it was served with."""

    watched: Watched
    status: int = 200


@dataclass
class Stage:
    """What a page needs to be set up: the scene, the provider, and cleanups for this page only."""

    scene: Scene
    idp: TestProvider
    monkeypatch: pytest.MonkeyPatch
    stack: contextlib.ExitStack

    @property
    def base_url(self) -> str:
        return self.scene.server.base_url

    def write(self, text: str | None, *, mode: int = 0o600) -> Path:
        """The config file holds `text` (or is absent), a plain file whatever it was before."""
        config = self.scene.config
        config.unlink(missing_ok=True)
        if text is not None:
            config.write_text(text)
            config.chmod(mode)
        return config

    def open(self, path: str, *, session: bool = True) -> Watched:
        """A new tab on `path`, in the context with the session, or in the one without."""
        watched = watch((self.scene.session if session else self.scene.stranger).new_page())
        self.stack.callback(watched.page.close)
        watched.page.goto(f"{self.base_url}{path}")
        return watched


def _heading(page: Page, text: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_have_text(text)


def _id_token(claims: dict[str, Any]) -> str:
    """A JWT-shaped token: the status page only decodes its payload (verified when it was saved)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def _oauth_file(idp: TestProvider, *, expires_in: int, refresh: bool = True) -> str:
    refresh_line = 'refresh_token = "rt-not-a-real-token"\n' if refresh else ""
    return (
        f"{USER_FILE}\n[auth]\n"
        'access_token = "at-not-a-real-token"\n'
        f"{refresh_line}"
        f"expires_at = {int(time.time()) + expires_in}\n"
        f'id_token = "{_id_token({"email": EMAIL, "sub": "alice"})}"\n'
        f'issuer = "{idp.issuer}"\n'
        f'client_id = "{idp.client_id}"\n'
    )


def _start_login(stage: Stage) -> str:
    """A pending browser sign-in begun by the session (what its Sign in button posts): where it goes."""
    status = stage.open("/")
    token = status.page.locator('input[name="csrf_token"]').first.get_attribute("value")
    assert token
    start = stage.scene.session.request.post(
        f"{stage.base_url}/login", form={"csrf_token": token}, max_redirects=0
    )
    assert start.status == 303, start.text()
    return start.headers["location"]


# ---- the pages, each in the state it shows ------------------------------------------------------
PAGES: dict[str, Callable[[Stage], Shown]] = {}


def _page(name: str) -> Callable[[Callable[[Stage], Shown]], Callable[[Stage], Shown]]:
    def register(setup: Callable[[Stage], Shown]) -> Callable[[Stage], Shown]:
        PAGES[name] = setup
        return setup

    return register


@_page("status-signed-out")
def _status_signed_out(stage: Stage) -> Shown:
    stage.write(USER_FILE)
    watched = stage.open("/")
    _heading(watched.page, "Not signed in")
    expect(watched.page.get_by_role("button", name="Sign in with a code")).to_be_enabled()
    return Shown(watched)


@_page("status-signed-in")
def _status_signed_in(stage: Stage) -> Shown:
    """Signed in through the real provider; the callback comes back to the browser with the session."""
    stage.write(USER_FILE)
    callback = stage.idp.login_without_browser(_start_login(stage))
    watched = stage.open(urlsplit(callback)._replace(scheme="", netloc="").geturl())
    page = watched.page
    expect(page).to_have_url(f"{stage.base_url}/")
    _heading(page, "Signed in")
    expect(page.get_by_role("status")).to_contain_text(f"Signed in as {EMAIL}")
    expect(page.locator(".time-left")).to_contain_text("left")
    return Shown(watched)


@_page("status-api-key")
def _status_api_key(stage: Stage) -> Shown:
    stage.write(USER_FILE)
    watched = stage.open("/")
    page = watched.page
    page.get_by_label("API key", exact=True).fill(API_KEY)
    page.get_by_role("button", name="Save API key").click()
    expect(page.get_by_role("status")).to_contain_text("API key sk-…wxyz saved")
    _heading(page, "Signed in")
    return Shown(watched)


@_page("status-expired-refreshable")
def _status_expired_refreshable(stage: Stage) -> Shown:
    stage.write(_oauth_file(stage.idp, expires_in=-7200))
    watched = stage.open("/")
    page = watched.page
    _heading(page, "Signed in")
    expect(page.get_by_role("status")).to_contain_text("The access token has expired")
    expect(page.locator(".time-left")).to_contain_text("expired 2 h")
    expect(page.get_by_role("button", name="Refresh")).to_be_visible()
    return Shown(watched)


@_page("status-expired")
def _status_expired(stage: Stage) -> Shown:
    stage.write(_oauth_file(stage.idp, expires_in=-86400 * 3, refresh=False))
    watched = stage.open("/")
    _heading(watched.page, "Session expired")
    expect(watched.page.get_by_role("status")).to_contain_text("cannot be refreshed: sign in again")
    return Shown(watched)


@_page("status-warnings")
def _status_warnings(stage: Stage) -> Shown:
    """Readable by others (0644), a symlink, and OPENAI_API_KEY in the portal's environment."""
    stage.monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    config = stage.write(None)
    target = config.parent.parent / "dotfiles" / "codex-config.toml"
    target.parent.mkdir(exist_ok=True)
    target.write_text(_oauth_file(stage.idp, expires_in=3600))
    target.chmod(0o644)
    config.symlink_to(target)
    stage.stack.callback(config.unlink)
    watched = stage.open("/")
    warnings = watched.page.locator(".notice-warning")
    expect(warnings).to_have_count(3)
    expect(warnings.nth(0)).to_contain_text("OPENAI_API_KEY is set")
    expect(warnings.nth(1)).to_contain_text("is a symlink to")
    expect(warnings.nth(2)).to_contain_text("(mode 0644)")
    return Shown(watched)


@_page("status-form-error")
def _status_form_error(stage: Stage) -> Shown:
    stage.write(USER_FILE)
    watched = stage.open("/")
    page = watched.page
    page.get_by_label("API key", exact=True).fill("sk-has a space")
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Save API key").click()
    assert posted.value.status == 303  # then the page, by a redirect
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("alert")).to_contain_text("only visible ASCII characters")
    expect(page.locator("#api_key_error")).to_contain_text("only visible ASCII characters")
    field = page.get_by_label("API key", exact=True)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_accessible_description(re.compile("only visible ASCII characters"))
    return Shown(watched)


@_page("status-config-error")
def _status_config_error(stage: Stage) -> Shown:
    stage.write(USER_FILE + "[auth\napi_key = 1\n")
    watched = stage.open("/")
    page = watched.page
    expect(page.get_by_role("alert")).to_contain_text("is not valid TOML")
    full_stop = re.compile(r"column 6\)\. Fix the file by hand:\s+codex-portal")  # a sentence, then the next
    expect(page.get_by_role("alert")).to_contain_text(full_stop)
    _heading(page, "Not signed in")
    for name in ("Sign in", "Sign in with a code", "Save API key"):
        button = page.get_by_role("button", name=name, exact=True)
        expect(button).to_be_disabled()  # they would fail: say why instead
        expect(button).to_have_accessible_description(re.compile("is not valid TOML"))
    return Shown(watched)


@_page("status-device-unavailable")
def _status_device_unavailable(stage: Stage) -> Shown:
    """The provider offers no device authorization endpoint, and answered 404 to the Codex CLI's
    device protocol: the button is disabled, and says why."""
    stage.write(USER_FILE)
    portal = stage.scene.server.portal
    assert portal.metadata is not None
    stage.monkeypatch.setattr(
        portal, "metadata", dataclasses.replace(portal.metadata, device_authorization_endpoint=None)
    )
    stage.monkeypatch.setattr(portal, "device_unavailable", True)
    watched = stage.open("/")
    button = watched.page.get_by_role("button", name="Sign in with a code")
    expect(button).to_be_disabled()
    expect(button).to_have_accessible_description(re.compile("offers no device authorization endpoint"))
    return Shown(watched)


@_page("device")
def _device(stage: Stage) -> Shown:
    stage.write(USER_FILE)
    watched = stage.open("/")
    page = watched.page
    page.get_by_role("button", name="Sign in with a code").click()
    expect(page).to_have_url(f"{stage.base_url}/device")
    _heading(page, "Sign in with a code")
    expect(page.locator("#user-code")).to_have_text(re.compile(r"^\s*[A-Z0-9-]{4,}\s*$"))
    expect(page.get_by_role("button", name="Copy code")).to_be_visible()  # device.js ran

    def cancel() -> None:  # ends the sign-in, and shows (so spends) the notice it leaves
        page.get_by_role("button", name="Cancel").click()
        expect(page.get_by_role("status").first).to_contain_text("Sign-in with a code cancelled")

    stage.stack.callback(cancel)
    return Shown(watched)


@_page("logout-signed-in")
def _logout_signed_in(stage: Stage) -> Shown:
    stage.write(_oauth_file(stage.idp, expires_in=3600))
    watched = stage.open("/logout")
    _heading(watched.page, "Sign out")
    expect(watched.page.get_by_role("button", name="Sign out")).to_be_visible()
    return Shown(watched)


@_page("logout-signed-out")
def _logout_signed_out(stage: Stage) -> Shown:
    stage.write(USER_FILE)
    watched = stage.open("/logout")
    expect(watched.page.get_by_text("You are not signed in.")).to_be_visible()
    return Shown(watched)


@_page("error-403")
def _error_403(stage: Stage) -> Shown:
    watched = stage.open("/", session=False)
    _heading(watched.page, "Access refused")
    alert = watched.page.get_by_role("alert")
    # The stage's portal had its link opened already, in another browser context: this one is refused.
    expect(alert).to_contain_text("The link that codex-portal printed was already used, in another browser")
    expect(alert).to_contain_text("Run codex-portal again in a terminal for a new link.")
    return Shown(watched, 403)


@_page("error-400")
def _error_400(stage: Stage) -> Shown:
    watched = stage.open("/auth/callback?state=x", session=False)
    _heading(watched.page, "Something went wrong")
    expect(watched.page.get_by_role("alert")).to_contain_text("This sign-in is unknown")
    return Shown(watched, 400)


@_page("error-404")
def _error_404(stage: Stage) -> Shown:
    """The result page of a sign-in, opened a second time (a reload): it was shown once already."""
    watched = stage.open("/auth/done?result=shown-already", session=False)
    _heading(watched.page, "Not found")
    return Shown(watched, 404)


@_page("done-success")
def _done_success(stage: Stage) -> Shown:
    """The callback reaches a browser without the portal's session: the result gets a page of its own."""
    stage.write(USER_FILE)
    callback = stage.idp.login_without_browser(_start_login(stage))
    watched = stage.open(urlsplit(callback)._replace(scheme="", netloc="").geturl(), session=False)
    expect(watched.page).to_have_url(re.compile(rf"^{re.escape(stage.base_url)}/auth/done\?result="))
    _heading(watched.page, "Sign-in complete")
    expect(watched.page.get_by_role("status")).to_contain_text(f"Signed in as {EMAIL}")
    return Shown(watched)


@_page("done-failure")
def _done_failure(stage: Stage) -> Shown:
    """The person cancelled on the provider's page; the callback lands in a browser without the session."""
    callback = stage.idp.login_without_browser(_start_login(stage), approve=False)
    assert "error=access_denied" in callback
    watched = stage.open(urlsplit(callback)._replace(scheme="", netloc="").geturl(), session=False)
    expect(watched.page).to_have_url(re.compile(rf"^{re.escape(stage.base_url)}/auth/done\?result="))
    _heading(watched.page, "Sign-in did not complete")
    expect(watched.page.get_by_role("status")).to_contain_text(
        "Sign-in failed: the provider refused the sign-in"
    )
    return Shown(watched, 400)


@_page("not-found")
def _not_found(stage: Stage) -> Shown:
    """An address the portal does not have (a typo, an old bookmark), with the session."""
    watched = stage.open("/no-such-page")
    expect(watched.page.locator("body")).to_contain_text(re.compile("not found", re.IGNORECASE))
    return Shown(watched, 404)


# ---- the checks --------------------------------------------------------------------------------
FOCUS_TARGET = """() => {
    const first = document.querySelector("main button:not([disabled]):not([hidden]), main .button-link");
    return first || document.querySelector("main a[href]") || document.querySelector("a[href]");
}"""
# The focused element's outline: at least 2 px, and 3:1 against what surrounds it (WCAG 1.4.11).
FOCUS_RING = """() => {
    const e = document.activeElement, s = getComputedStyle(e);
    const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
    const channel = v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    let against = "rgb(255, 255, 255)";
    for (let around = e.parentElement; around; around = around.parentElement) {
        const color = getComputedStyle(around).backgroundColor, parts = rgb(color);
        if (parts.length === 3 || parts[3] > 0) { against = color; break; }
    }
    const [a, b] = [luminance(rgb(s.outlineColor)), luminance(rgb(against))];
    return {style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor, against,
            contrast: Math.round((Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05) * 100) / 100,
            visible: e.matches(":focus-visible")};
}"""
WIDER_THAN = """width => {
    const found = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node && found.length < 5; node = walker.nextNode()) {
        const range = document.createRange();
        range.selectNodeContents(node);
        const right = Math.ceil(range.getBoundingClientRect().right);
        if (right > width) {
            found.push(`text in <${node.parentElement.localName} class="${node.parentElement.className}"> `
                + `ends at ${right} px: ${node.textContent.trim().slice(0, 80)}`);
        }
    }
    return found;
}"""


def _axe_violations(axe: Axe, page: Page) -> list[str]:
    """axe-core's violations, run in the page itself (injected once per page by the DevTools protocol,
    which the page's CSP does not govern)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe.axe_script)
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"axe {violation['id']} ({violation['impact']}): "
        + "; ".join(
            f"{node['target']} {node.get('failureSummary', '')!r}"[:300] for node in violation["nodes"]
        )
        for violation in results["violations"]
    ]


def _focus_problems(page: Page) -> list[str]:
    """Tab from the top of the page to its first button (or link): is the focus ring there?"""
    target = page.evaluate_handle(FOCUS_TARGET)
    described = page.evaluate("e => e ? e.outerHTML.slice(0, 80) : null", target)
    if described is None:
        return ["nothing to focus: no button and no link"]
    page.mouse.click(1, 1)  # the header's padding: Tab starts from the top, focus leaves any field
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("e => document.activeElement === e", target):
            break
    else:
        return [f"Tab never reached {described}"]
    ring = page.evaluate(FOCUS_RING)
    page.evaluate("document.activeElement.blur()")
    if ring["style"] == "none" or ring["width"] < 2 or ring["contrast"] < 3 or not ring["visible"]:
        return [f"no visible focus on {described}: {ring}"]
    return []


def _check(page_name: str, shown: Shown, variant: Variant, axe: Axe, out: Path) -> list[str]:
    page = shown.watched.page
    page.emulate_media(color_scheme=variant.scheme)
    page.set_viewport_size({"width": variant.width, "height": HEIGHT})
    page.wait_for_load_state("load")  # the stylesheet applies: colours count
    problems: list[str] = []
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    if background != BACKGROUND[variant.scheme]:
        problems.append(f"the {variant.scheme} palette is not applied: background {background}")
    problems += _axe_violations(axe, page)
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    if scroll_width > variant.width:
        wide = page.evaluate(WIDER_THAN, variant.width)
        problems.append(f"scrolls sideways ({scroll_width} px > {variant.width} px): {wide}")
    problems += _focus_problems(page)
    docs = os.environ.get("UPDATE_SCREENSHOTS") == "1" and _for_docs(page_name, variant)
    folder = DOCS_DIR if docs else out
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"{page_name}-{variant.name}.png"
    page.screenshot(path=shot, full_page=True, animations="disabled", caret="hide")
    assert shot.stat().st_size > 0
    return [f"{variant.name}: {problem}" for problem in problems]


def _unexpected_console_errors(shown: Shown) -> list[str]:
    """Console errors and uncaught exceptions, but the one Chromium logs for the page's own status."""
    own = f"Failed to load resource: the server responded with a status of {shown.status} "
    served_at = {shown.watched.page.url} | {r.url for r in shown.watched.requests if r.method == "POST"}
    errors = []
    for message in shown.watched.console_errors:
        url = str(message.location.get("url") or "")
        if shown.status != 200 and message.text.startswith(own) and url in served_at:
            continue
        errors.append(f"{message.text} at {url or '?'}")
    return errors + [f"uncaught: {error}" for error in shown.watched.page_errors]


def _problems(name: str, shown: Shown, axe: Axe, out: Path, variants: tuple[Variant, ...]) -> list[str]:
    problems: list[str] = []
    for variant in variants:
        problems += _check(name, shown, variant, axe, out)
    problems += [f"console: {error}" for error in _unexpected_console_errors(shown)]
    hosts = shown.watched.hosts()
    if not hosts <= LOOPBACK:
        problems.append(f"requests left loopback: {sorted(hosts - LOOPBACK)}")
    assert shown.watched.requests
    return problems


@pytest.mark.parametrize("name", list(PAGES))
def test_page_in_every_variant(
    name: str,
    scene: Scene,
    axe: Axe,
    idp: TestProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with contextlib.ExitStack() as stack:
        shown = PAGES[name](Stage(scene, idp, monkeypatch, stack))
        problems = _problems(name, shown, axe, tmp_path, VARIANTS)
        assert not problems, f"{name} ({shown.watched.page.url}):\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def long_scene(
    browser: Browser, idp: TestProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    """A portal whose config file is CODEX_HOME deep in a project folder: a path over 80 characters
    long, one word without spaces (pytest's own folder makes it long)."""
    home = tmp_path_factory.mktemp("long") / "projects" / "a-project-with-a-rather-long-name" / "sandbox"
    with contextlib.ExitStack() as stack:
        yield _set_scene(browser, idp, home, stack)


@pytest.mark.parametrize("name", ["status-warnings", "status-config-error"])
def test_a_long_config_path_wraps_on_a_phone(
    name: str,
    long_scene: Scene,
    axe: Axe,
    idp: TestProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The notices that name the config file wrap its path on a phone (and the page stays accessible)."""
    assert len(str(long_scene.config)) > 80, long_scene.config
    with contextlib.ExitStack() as stack:
        shown = PAGES[name](Stage(long_scene, idp, monkeypatch, stack))
        narrow = tuple(variant for variant in VARIANTS if variant.width == NARROW)
        problems = _problems(f"long-path-{name}", shown, axe, tmp_path, narrow)
        assert not problems, f"{name} ({shown.watched.page.url}):\n" + "\n".join(problems)


# ---- what the pictures showed --------------------------------------------------------------------
CARD_GAPS = """() => [...document.querySelectorAll(".card")].map(card => {
    const shown = [...card.children].filter(child => child.getClientRects().length > 0);
    const box = card.getBoundingClientRect();
    const top = shown[0].getBoundingClientRect().top;
    const bottom = shown[shown.length - 1].getBoundingClientRect().bottom;
    return {card: (card.querySelector("h2") || shown[0]).textContent.trim().slice(0, 30),
            top: Math.round(top - box.top), bottom: Math.round(box.bottom - bottom)};
})"""


@pytest.mark.parametrize("name", ["logout-signed-in", "logout-signed-out", "status-signed-out"])
def test_cards_have_even_padding(
    name: str, scene: Scene, idp: TestProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.ExitStack() as stack:
        page = PAGES[name](Stage(scene, idp, monkeypatch, stack)).watched.page
        gaps: list[dict[str, Any]] = page.evaluate(CARD_GAPS)
        assert gaps
        uneven = [gap for gap in gaps if abs(gap["top"] - gap["bottom"]) > 4]
        assert not uneven, f"{name}: uneven space inside cards (px): {uneven}"


def test_an_expired_session_offers_sign_in_not_refresh(
    scene: Scene, idp: TestProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.ExitStack() as stack:
        page = PAGES["status-expired"](Stage(scene, idp, monkeypatch, stack)).watched.page
        # (Plain reads, not `expect`: an expected failure should not wait out expect's timeout.)
        sign_in = page.get_by_role("button", name="Sign in", exact=True).get_attribute("class") or ""
        assert "secondary" not in sign_in.split(), "Sign in is not the main action"
        assert page.get_by_role("button", name="Refresh").count() == 0, "Refresh is offered"
