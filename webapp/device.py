"""Device authorization grant (RFC 8628): a code the person types on another device.

Polling honours `interval` (5 s when the provider gives none), adds 5 s for every `slow_down`
(and keeps it), ends on `expired_token`, `access_denied` or the code's own expiry, and backs off
on network errors instead of giving up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from webapp.errors import DeviceFlowError, OAuthError, ProviderError
from webapp.oauth import LoginResult, identify, request_token, token_client, tokens_from_response
from webapp.provider import (
    ProviderMetadata,
    check_url,
    clean_text,
    deadline,
    describe_http_error,
    http_client,
    parse_json_object,
)
from webapp.store import OAuthTokens

if TYPE_CHECKING:
    import httpx2

    from webapp.settings import Settings
    from webapp.store import CredentialStore

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0
MAX_BACKOFF = 60.0
END_STATES = {
    "expired_token": "the code expired before it was entered; start again",
    "access_denied": "the sign-in was denied on the other device",
}


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: float
    started: float  # time.monotonic() when the code was issued

    def seconds_left(self, now: float | None = None) -> int:
        return max(0, int(self.started + self.expires_in - (time.monotonic() if now is None else now)))


async def start_device_flow(
    metadata: ProviderMetadata, *, client_id: str, scope: str, timeout: float, transport: Any = None
) -> DeviceAuthorization:
    """RFC 8628 section 3.1-3.2: ask for a device code and a user code."""
    import httpx2

    if not metadata.device_authorization_endpoint:
        raise ProviderError(f"{metadata.issuer} does not offer sign-in with a code (no device endpoint)")
    async with _client(timeout, transport) as client:
        try:
            async with deadline(client, what="the provider's device endpoint"):
                response = await client.post(
                    metadata.device_authorization_endpoint, data={"client_id": client_id, "scope": scope}
                )
        except httpx2.HTTPError as exc:
            raise ProviderError(
                f"the provider's device endpoint failed: {describe_http_error(exc)}"
            ) from None
    body = parse_json_object(response, what="device authorization")
    if response.status_code != 200:
        raise OAuthError(
            clean_text(body.get("error"), 64) or f"HTTP {response.status_code}",
            clean_text(body.get("error_description")),
        )
    complete = clean_text(body.get("verification_uri_complete"), 2000)
    try:
        return DeviceAuthorization(
            device_code=_required(body, "device_code"),
            user_code=_required(body, "user_code")[:64],
            # Shown as links: only http(s) URLs, never javascript: or the like.
            verification_uri=check_url(_required(body, "verification_uri"), what="verification_uri"),
            verification_uri_complete=check_url(complete, what="verification_uri_complete")
            if complete
            else None,
            expires_in=int(body["expires_in"]),
            interval=float(body.get("interval") or DEFAULT_INTERVAL),
            started=time.monotonic(),
        )
    except (KeyError, TypeError, ValueError):
        raise ProviderError("the provider's device authorization is incomplete") from None


async def poll_device_token(
    metadata: ProviderMetadata,
    device: DeviceAuthorization,
    *,
    client_id: str,
    issuer: str,
    timeout: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    transport: Any = None,
) -> OAuthTokens:
    """RFC 8628 section 3.4-3.5: poll the token endpoint until the person has finished."""
    interval = device.interval
    backoff = interval
    async with token_client(client_id, timeout, transport=transport) as client:
        while True:
            if clock() + min(backoff, interval) >= device.started + device.expires_in:
                raise DeviceFlowError("expired_token", END_STATES["expired_token"])
            await sleep(backoff)
            try:
                token = await request_token(
                    client,
                    client.fetch_token(
                        metadata.token_endpoint, grant_type=DEVICE_CODE_GRANT, device_code=device.device_code
                    ),
                )
            except ProviderError:
                backoff = min(backoff * 2, MAX_BACKOFF)  # the network or the provider is down: try later
                continue
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    backoff = interval
                    continue
                if exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                    backoff = interval
                    continue
                if exc.error in END_STATES:
                    raise DeviceFlowError(exc.error, END_STATES[exc.error]) from None
                raise
            return tokens_from_response(token, issuer=issuer, client_id=client_id)


def _client(timeout: float, transport: Any) -> httpx2.AsyncClient:
    if transport is None:
        return http_client(timeout)
    import httpx2

    return httpx2.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


def _required(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(name)
    return value


async def complete_device_login(
    metadata: ProviderMetadata, device: DeviceAuthorization, *, settings: Settings, store: CredentialStore
) -> LoginResult:
    """Poll until the person has finished, verify what came back, save it (as the browser flow does)."""
    from webapp.tokens import save_login

    issuer = settings.issuer.rstrip("/")
    tokens = await poll_device_token(
        metadata, device, client_id=settings.client_id, issuer=issuer, timeout=settings.timeout
    )
    result = await identify(tokens, metadata, nonce=None, timeout=settings.timeout)
    await save_login(store, result, settings)
    return result
