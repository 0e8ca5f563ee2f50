"""A real codex-portal server (uvicorn on loopback sockets) run in a thread for tests."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx2
from fastapi import FastAPI

from tests.conftest import free_port
from tests.idp import TestProvider
from webapp.portal import Portal
from webapp.server import serve_portal
from webapp.settings import Settings


class PortalServer:
    def __init__(self, settings: Settings, *, launch_token: str) -> None:
        self.settings = settings
        self.launch_token = launch_token
        self.base_url = f"http://localhost:{settings.port}"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.app: FastAPI | None = None

    def _keep_app(self, app: FastAPI) -> None:
        self.app = app

    @property
    def portal(self) -> Portal:
        """The running portal's state (pending sign-ins, sessions, provider metadata)."""
        assert self.app is not None
        portal: Portal = self.app.state.portal
        return portal

    @property
    def launch_url(self) -> str:
        return f"{self.base_url}/?token={self.launch_token}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve_portal(
                self.settings,
                launch_token=self.launch_token,
                on_ready=self._ready.set,
                stop=self._stop,
                app_ready=self._keep_app,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def __enter__(self) -> PortalServer:
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"the portal did not start: {self._error!r}")
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def page_csrf(client: httpx2.Client) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text)
    assert match
    return match.group(1)


def sign_in(idp: TestProvider, browser: httpx2.Client, login: str = "alice") -> httpx2.Response:
    """The browser sign-in as a person does it, the provider's pages driven without a browser."""
    start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
    assert start.status_code == 303
    authorize = start.headers["location"]
    assert authorize.startswith(idp.issuer)
    assert "code_challenge_method=S256" in authorize and "state=" in authorize and "nonce=" in authorize
    callback = idp.login_without_browser(authorize, login=login)
    assert callback.startswith(f"{browser.base_url}/auth/callback?")
    return browser.get(callback)


def settings_for(idp: TestProvider, config_path: Path) -> Settings:
    """Settings for a portal that signs in through `idp`, on a free port, opening no browser."""
    return Settings(
        config_path=config_path,
        issuer=idp.issuer,
        client_id=idp.client_id,
        port=free_port(),
        open_browser=False,
    )


@contextlib.contextmanager
def signed_in_portal(idp: TestProvider, settings: Settings) -> Iterator[httpx2.Client]:
    """A running portal whose browser session has signed in through `idp`."""
    token = "launch-" + "x" * 32
    with PortalServer(settings, launch_token=token) as server:
        with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as browser:
            assert browser.get(server.launch_url).status_code == 303
            assert sign_in(idp, browser).status_code == 303
            yield browser
