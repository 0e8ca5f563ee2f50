"""Device authorization grant (RFC 8628): a code the person types on another device.

An issuer without an RFC 8628 endpoint (the default one) is asked through the Codex CLI's own
device protocol instead (webapp.codex_device); the rest (the page, the CLI, the end states) is
the same for both.

Polling honours `interval` (5 s when the provider gives none), adds 5 s for every `slow_down`
(and keeps it), ends on `expired_token`, `access_denied` or the code's own expiry, and backs off
on network errors instead of giving up.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from webapp.credentials import Credentials, printable
from webapp.errors import DeviceFlowError, OAuthError, ProviderError
from webapp.oauth import credentials_from_token, identify
from webapp.provider import Provider, check_url, clean_text, raise_oauth_error

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0
MAX_BACKOFF = 60.0
MIN_INTERVAL = 1.0  # a provider asking for faster polling is not obeyed
MAX_INTERVAL = 60.0
MAX_LIFETIME = 15 * 60  # seconds a code is waited for, whatever the provider says
END_STATES = {
    "expired_token": "the code expired before it was entered; start again",
    "access_denied": "the sign-in was denied on the other device",
}
# The Codex CLI's warning (device codes are phished: "enter this code to claim your prize"), said on
# the page and in the terminal.
PHISHING_WARNING = (
    "Continue only if you started this sign-in yourself. "
    "Never enter a code that a website or another person gave you."
)


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: float
    started: float  # time.monotonic() when the code was issued
    protocol: str = "rfc8628"  # or "codex": the Codex CLI's device protocol (webapp.codex_device)

    def seconds_left(self, now: float | None = None) -> int:
        return max(0, int(self.started + self.expires_in - (time.monotonic() if now is None else now)))


class Wait(enum.Enum):
    """What a poll answered when it has no result yet."""

    PENDING = "pending"  # the person has not finished: ask again after the interval
    SLOW_DOWN = "slow_down"  # RFC 8628 3.5: the interval grows by 5 s, for good
    RETRY = "retry"  # the network or the provider is down: back off, doubling up to MAX_BACKOFF


T = TypeVar("T")


async def poll(
    device: DeviceAuthorization,
    ask: Callable[[], Awaitable[T | Wait]],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Ask every `interval` until `ask` answers something other than a Wait; the code's lifetime
    ends it with expired_token. The rhythm of both protocols (RFC 8628 and the Codex CLI's)."""
    interval = backoff = device.interval
    while True:
        if clock() + min(backoff, interval) >= device.started + device.expires_in:
            raise DeviceFlowError("expired_token", END_STATES["expired_token"])
        await sleep(backoff)
        answer = await ask()
        if answer is Wait.PENDING:
            backoff = interval
        elif answer is Wait.SLOW_DOWN:
            interval += SLOW_DOWN_STEP
            backoff = interval
        elif answer is Wait.RETRY:
            backoff = min(backoff * 2, MAX_BACKOFF)
        else:
            return answer


async def start_device_flow(provider: Provider, *, client_id: str, scope: str) -> DeviceAuthorization:
    """RFC 8628 section 3.1-3.2: ask for a device code and a user code (an issuer without an
    RFC 8628 endpoint is asked through the Codex CLI's device protocol)."""
    metadata = await provider.metadata()
    if not metadata.device_authorization_endpoint:
        from webapp.codex_device import start_codex_device_flow

        return await start_codex_device_flow(provider, client_id=client_id)
    response = await provider.post_form(
        metadata.device_authorization_endpoint,
        {"client_id": client_id, "scope": scope},
        what="the provider's device endpoint",
    )
    if response.status != 200:
        raise_oauth_error(response, what="the provider's device endpoint")
    body = response.json_object(what="device authorization")
    complete = clean_text(body.get("verification_uri_complete"), 2000)
    try:
        return DeviceAuthorization(
            device_code=_required(body, "device_code"),
            user_code=_required(printable(body.get("user_code"), limit=64), "user_code"),
            # Shown as links: only http(s) URLs, never javascript: or the like.
            verification_uri=check_url(_required(body, "verification_uri"), what="verification_uri"),
            verification_uri_complete=check_url(complete, what="verification_uri_complete")
            if complete
            else None,
            expires_in=_lifetime(body["expires_in"]),
            interval=bounded_interval(body.get("interval")),
            started=time.monotonic(),
        )
    except (KeyError, TypeError, ValueError):
        raise ProviderError("the provider's device authorization is incomplete") from None


async def poll_device_token(
    provider: Provider,
    device: DeviceAuthorization,
    *,
    client_id: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Credentials:
    """RFC 8628 section 3.4-3.5: poll the token endpoint until the person has finished."""
    request = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code, "client_id": client_id}

    async def ask() -> dict[str, Any] | Wait:
        try:
            return await provider.token(request)
        except ProviderError:
            return Wait.RETRY
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                return Wait.PENDING
            if exc.error == "slow_down":
                return Wait.SLOW_DOWN
            if exc.error in END_STATES:
                raise DeviceFlowError(exc.error, END_STATES[exc.error]) from None
            raise

    token = await poll(device, ask, sleep=sleep, clock=clock)
    return credentials_from_token(token, issuer=provider.issuer, client_id=client_id)


def _required(body: dict[str, Any] | str, name: str) -> str:
    value = body if isinstance(body, str) else body.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(name)
    return value


def _lifetime(value: object) -> int:
    """RFC 8628 `expires_in`, bounded: a code is waited for 15 minutes at most."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("expires_in")
    return int(min(value, MAX_LIFETIME))


def bounded_interval(value: object) -> float:
    """RFC 8628 `interval` (5 s when absent), kept within 1..60 s whatever the provider says."""
    if value is None:
        return DEFAULT_INTERVAL
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError("interval")
    return min(max(float(value), MIN_INTERVAL), MAX_INTERVAL)


async def complete_device_login(
    provider: Provider, device: DeviceAuthorization, *, client_id: str
) -> Credentials:
    """Poll until the person has finished, then verify what came back (as the browser flow does)."""
    if device.protocol == "codex":
        from webapp.codex_device import complete_codex_device_flow

        creds = await complete_codex_device_flow(provider, device, client_id=client_id)
    else:
        creds = await poll_device_token(provider, device, client_id=client_id)
    return await identify(provider, creds, nonce=None)
