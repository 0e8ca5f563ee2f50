"""What happens to saved credentials: a finished sign-in saved, refresh, revocation (RFC 7009),
sign-out, and the status report.

Refresh is single flight however many callers ask at once: threads of this process queue on one
lock per config file, processes on the sidecar file lock; whoever gets the lock re-reads the file
and refreshes only if the token still needs it, then saves the rotated refresh token before
anyone can use the new access token.

Revocation goes to the issuer and client that issued the token (saved beside it in [auth]),
whatever the current settings say, and is best effort within a bounded time: the person is
signed out locally even when the provider cannot be reached.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from webapp.errors import NotSignedIn, OAuthError, PortalError, ProviderError, SessionExpired
from webapp.provider import discover, http_client
from webapp.settings import Settings
from webapp.store import Credentials, CredentialStore, OAuthTokens, unverified_claims

if TYPE_CHECKING:
    from webapp.oauth import LoginResult

REFRESH_MARGIN = 60  # seconds: an access token this close to expiry is refreshed first
_flights: dict[str, threading.Lock] = {}
_flights_guard = threading.Lock()


@dataclass(frozen=True)
class SignOut:
    previous: Credentials | None
    revoked: bool | None  # None: there was no refresh token to revoke


async def save_login(store: CredentialStore, result: LoginResult, settings: Settings) -> None:
    """Save new tokens first; only then revoke the refresh token they replace."""
    previous = await asyncio.to_thread(store.save_oauth, result.tokens)
    if previous is not None and previous.refresh_token != result.tokens.refresh_token:
        await revoke_refresh_token(previous, settings)


async def save_api_key(store: CredentialStore, key: str, settings: Settings) -> None:
    previous = await asyncio.to_thread(store.save_api_key, key)
    if previous is not None:
        await revoke_refresh_token(previous, settings)


async def sign_out(store: CredentialStore, settings: Settings) -> SignOut:
    """Remove [auth] locally first (so a hung provider cannot keep anyone signed in), then revoke."""
    previous = await asyncio.to_thread(store.clear)
    revoked = await revoke_refresh_token(previous, settings) if previous else None
    return SignOut(previous=previous, revoked=revoked)


async def revoke_refresh_token(creds: Credentials, settings: Settings) -> bool | None:
    """RFC 7009 revocation of `creds`' refresh token; True when the provider accepted it."""
    if creds.method != "oauth" or not creds.refresh_token:
        return None
    try:
        return await asyncio.wait_for(_revoke(creds, settings), timeout=settings.revoke_timeout)
    except (TimeoutError, PortalError):
        return False


async def _revoke(creds: Credentials, settings: Settings) -> bool:
    import httpx2

    issuer = creds.issuer or settings.issuer
    client_id = creds.client_id or settings.client_id
    async with http_client(settings.revoke_timeout) as client:
        metadata = await discover(issuer, client=client)
        if not metadata.revocation_endpoint or creds.refresh_token is None:
            return False
        try:
            response = await client.post(
                metadata.revocation_endpoint,
                data={
                    "token": creds.refresh_token,
                    "token_type_hint": "refresh_token",
                    "client_id": client_id,
                },
            )
        except httpx2.HTTPError:
            return False
    return response.status_code == 200


def _flight(path: Path) -> threading.Lock:
    with _flights_guard:
        return _flights.setdefault(str(path), threading.Lock())


def needs_refresh(creds: Credentials, now: float | None = None) -> bool:
    if creds.method != "oauth" or creds.expires_at is None:
        return False
    return creds.expires_at - (time.time() if now is None else now) <= REFRESH_MARGIN


def ensure_fresh(
    store: CredentialStore, settings: Settings, *, force: bool = False, seen_access_token: str | None = None
) -> Credentials:
    """Valid credentials, refreshed first when needed (blocking: run it in a thread from async code).

    `force` (the Refresh button) refreshes unless someone else already did since the caller looked,
    which `seen_access_token` tells.
    """
    with _flight(store.path), store.transaction() as tx:
        creds = tx.credentials
        if creds is None:
            raise NotSignedIn()
        if creds.method != "oauth":
            return creds
        wanted = force and seen_access_token in (None, creds.access_token)
        if not (wanted or needs_refresh(creds)):
            return creds
        if not creds.refresh_token:
            raise SessionExpired()
        try:
            tokens = asyncio.run(_refresh(creds, settings))
        except ProviderError as exc:
            raise ProviderError(f"could not refresh: {exc.message}; the saved tokens were kept") from None
        except OAuthError as exc:
            if exc.error != "invalid_grant":
                raise
            # The refresh token is dead: forget it, so status says "expired" and nobody retries it.
            tx.save_oauth(_tokens_of(replace(creds, refresh_token=None), settings))
            raise SessionExpired() from None
        tx.save_oauth(tokens)
        assert tx.credentials is not None
        return tx.credentials


def _tokens_of(creds: Credentials, settings: Settings) -> OAuthTokens:
    return OAuthTokens(
        access_token=creds.access_token or "",
        refresh_token=creds.refresh_token,
        expires_at=creds.expires_at,
        id_token=creds.id_token,
        issuer=creds.issuer or settings.issuer,
        client_id=creds.client_id or settings.client_id,
    )


async def _refresh(creds: Credentials, settings: Settings) -> OAuthTokens:
    """RFC 6749 section 6, at the issuer and client that issued the token."""
    from webapp.oauth import request_token, token_client, tokens_from_response, verify_id_token

    issuer = (creds.issuer or settings.issuer).rstrip("/")
    client_id = creds.client_id or settings.client_id
    async with http_client(settings.timeout) as client:
        metadata = await discover(issuer, client=client)
    async with token_client(client_id, settings.timeout) as oauth:
        refresh = oauth.refresh_token(metadata.token_endpoint, refresh_token=creds.refresh_token)
        fresh = tokens_from_response(await request_token(oauth, refresh), issuer=issuer, client_id=client_id)
    if fresh.id_token and fresh.id_token != creds.id_token:
        # OIDC Core 12.2: a refreshed ID token is verified like the first (no nonce), for the same person.
        async with http_client(settings.timeout) as client:
            claims = await verify_id_token(
                fresh.id_token, metadata, client_id=client_id, nonce=None, client=client
            )
        if creds.id_token and claims.get("sub") != unverified_claims(creds.id_token).get("sub"):
            raise ProviderError("the provider's refreshed ID token names another account")
    return replace(
        fresh,
        refresh_token=fresh.refresh_token or creds.refresh_token,  # not rotated: the old one stays valid
        id_token=fresh.id_token or creds.id_token,
    )


async def get_access_token(codex_home: Path | None = None) -> str:
    """A valid access token (or the API key), refreshed under the lock first if needed."""
    settings = Settings.from_env()
    if codex_home is not None:
        settings = settings.with_overrides(config_path=Path(codex_home) / "config.toml")
    creds = await asyncio.to_thread(ensure_fresh, CredentialStore(settings.config_path), settings)
    token = creds.access_token if creds.method == "oauth" else creds.api_key
    assert token is not None
    return token
