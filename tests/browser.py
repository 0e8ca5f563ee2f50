"""Debian's Chromium for the browser tests, kept on loopback."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Playwright

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
