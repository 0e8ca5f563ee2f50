"""The runtime state of one serving portal: its account, browser sessions, pending sign-ins."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from webapp.accounts import Account
from webapp.credentials import Credentials
from webapp.device import DeviceAuthorization
from webapp.oauth import PendingLogins
from webapp.provider import ProviderMetadata
from webapp.security import Sessions
from webapp.settings import Settings


@dataclass
class DeviceLogin:
    """The one pending sign-in with a code, polled by a background task."""

    device: DeviceAuthorization
    task: asyncio.Task[None] | None = None
    outcome: tuple[str, str] | None = None  # (kind, message) once it has ended


@dataclass
class Portal:
    settings: Settings
    account: Account
    sessions: Sessions
    logins: PendingLogins = field(default_factory=PendingLogins)
    results: dict[str, tuple[str, str]] = field(default_factory=dict)  # one-time callback results
    result_taken: asyncio.Event = field(default_factory=asyncio.Event)  # a result page was served
    on_login: Callable[[Credentials | None, str], None] | None = None
    form_action_origins: set[str] = field(default_factory=set)
    metadata: ProviderMetadata | None = None  # the current issuer's, once discovered
    device: DeviceLogin | None = None
    opened_at: str | None = None  # host:port where the printed link was opened (for the 403 page)
    device_unavailable: bool = False  # the issuer answered neither RFC 8628 nor the Codex CLI's protocol
    # Presented by `codex-portal open` (read from $CODEX_HOME/codex-portal-serve.json) for a new link.
    link_secret: str | None = field(default=None, repr=False)

    def keep_result(self, kind: str, message: str) -> str:
        """Keep a sign-in's outcome for the page that shows it; the id that page is opened with."""
        result_id = secrets.token_urlsafe(16)
        self.results[result_id] = (kind, message)
        return result_id

    def take_result(self, result_id: str) -> tuple[str, str] | None:
        """The (kind, message) kept under `result_id`, once."""
        result = self.results.pop(result_id, None)
        if result is not None:
            self.result_taken.set()
        return result

    def note_provider_origin(self, url: str) -> None:
        parts = urlsplit(url)
        self.form_action_origins.add(f"{parts.scheme}://{parts.netloc}")

    async def discover(self) -> ProviderMetadata:
        """The current issuer's endpoints; its authorization endpoint joins the CSP's form-action."""
        self.metadata = await self.account.provider.metadata()
        self.note_provider_origin(self.metadata.authorization_endpoint)
        return self.metadata
