"""Debian's Chromium for the browser tests, kept on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Frame,
    Page,
    Playwright,
    Request,
)

CHROMIUM = Path("/usr/bin/chromium")
LOOPBACK_ONLY = "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
# Chromium's own calls home would fail on this closed network, many at a time: switch them off.
QUIET_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
LAUNCH_ARGS = [f"--host-resolver-rules={LOOPBACK_ONLY}", *QUIET_ARGS]
LOOPBACK = frozenset({"localhost", "127.0.0.1"})


def launch_chromium(playwright: Playwright, *, resolver_rules: str = LOOPBACK_ONLY) -> Browser:
    """Headless Chromium where only loopback names resolve (`resolver_rules` may map more)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make chromium` (Debian's chromium package)")
    args = [f"--host-resolver-rules={resolver_rules}", *QUIET_ARGS]
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)


@dataclass
class Watched:
    """One tab and what it did: requests, committed main-frame URLs, console errors, uncaught errors."""

    page: Page
    requests: list[Request] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)
    console_errors: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[Error] = field(default_factory=list)

    @property
    def context(self) -> BrowserContext:
        return self.page.context

    def hosts(self) -> set[str]:
        return {urlsplit(request.url).hostname or request.url for request in self.requests}

    def errors(self, *, except_from: str | None = None) -> list[str]:
        """Console errors and uncaught exceptions, less those of pages from `except_from`.

        A CSP violation is a console error, sometimes without a URL: those always count.
        """
        return [
            f"{message.text} at {message.location.get('url') or '?'}"
            for message in self.console_errors
            if except_from is None or not str(message.location.get("url", "")).startswith(f"{except_from}/")
        ] + [f"uncaught: {error}" for error in self.page_errors]

    def history(self) -> list[str]:
        """The URLs of the tab's back/forward list (Chromium's DevTools protocol)."""
        cdp = self.context.new_cdp_session(self.page)
        try:
            entries: list[dict[str, Any]] = cdp.send("Page.getNavigationHistory")["entries"]
        finally:
            cdp.detach()
        return [str(entry["url"]) for entry in entries]


def watch(page: Page, *, whole_context: bool = False) -> Watched:
    """Record what `page` does; with `whole_context`, the requests of every tab of its context."""
    watched = Watched(page)

    # (Playwright wraps its handlers: plain functions, not bound built-ins such as list.append.)
    def on_request(request: Request) -> None:
        watched.requests.append(request)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.console_errors.append(message)

    def on_page_error(error: Error) -> None:
        watched.page_errors.append(error)

    def on_navigated(frame: Frame) -> None:
        if frame.parent_frame is None:
            watched.navigations.append(frame.url)

    (page.context if whole_context else page).on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("framenavigated", on_navigated)
    return watched


def assert_accessible(page: Page, what: str) -> None:
    """axe-core finds no violation, run in the page under its own CSP (axe-playwright-python
    injects it through the DevTools protocol, which the CSP does not govern)."""
    from axe_playwright_python.sync_playwright import Axe

    page.wait_for_load_state("load")  # the stylesheet applies: colours count
    results = Axe().run(page)
    found = [
        f"{violation['id']} ({violation['impact']}): {[node['target'] for node in violation['nodes']]}"
        for violation in results.response["violations"]
    ]
    assert not found, f"axe-core on {what} ({page.url}):\n" + "\n".join(found)
