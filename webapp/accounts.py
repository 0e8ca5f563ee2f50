"""The login of one CODEX_HOME, as a person acts on it: sign in, save a key, refresh, sign out, token.

The CLI, the pages and `run_login_server` all go through an `Account`; it holds the stores (both
kept in step, webapp.stores) and a `Provider` per issuer (webapp.provider).

Refresh is single flight however many callers ask at once, in this process or any other, the
Codex CLI included: it holds config.toml.lock and auth.lock across read-refresh-write, starts from
the newest tokens of either store, refreshes only if still needed, and saves the rotated refresh
token to both stores before anyone can use the new access token. So a refresh token either tool
has used is never sent again.

Revocation goes to the issuer and client that issued the token (saved beside it), whatever the
current settings say, and is best effort within a bounded time: the person is signed out locally
even when the provider cannot be reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from webapp.credentials import Credentials, claim_email, default_name, same_account, status_report
from webapp.errors import ConfigError, NotSignedIn, OAuthError, PortalError, ProviderError, SessionExpired
from webapp.provider import Provider, Providers
from webapp.settings import Settings
from webapp.stores import Stores, open_stores
from webapp.stores.saved import EMPTY as EMPTY_ACCOUNTS
from webapp.stores.saved import AccountsFile, SavedAccount, unique_name
from webapp.stores.sync import CodexView, SyncedTransaction

REFRESH_MARGIN = 60  # seconds: an access token this close to expiry is refreshed first
T = TypeVar("T")


@dataclass(frozen=True)
class SignOut:
    previous: Credentials | None
    revoked: bool | None  # None: there was no refresh token to revoke
    count: int = 0  # how many accounts were signed out


@dataclass(frozen=True)
class AccountEntry:
    name: str
    credentials: Credentials
    active: bool

    def report(self) -> dict[str, object]:
        """One object of `accounts --json`."""
        creds = self.credentials
        return {
            "name": self.name,
            "method": creds.method,
            "email": creds.email,
            "api_key_hint": creds.api_key_hint,
            "expires_at": creds.expires_at,
            "active": self.active,
        }


def find_account(accounts: AccountsFile, active: Credentials | None, name: str) -> SavedAccount | None:
    """The saved account called `name` (or whose email it is); None for the active account."""
    if active is not None and name in (accounts.active or default_name(active), active.email):
        return None
    named = [a for a in accounts.saved if a.name == name]
    if named:
        return named[0]
    by_email = [a for a in accounts.saved if a.credentials.email == name]
    if len(by_email) == 1:
        return by_email[0]
    if by_email:
        names = ", ".join(a.name for a in by_email)
        raise PortalError(f"{name} is the email of {len(by_email)} saved accounts ({names}): use the name")
    raise PortalError(f"no account named {name}; `codex-portal accounts` lists them")


def _accounts_or_empty(tx: SyncedTransaction) -> AccountsFile:
    try:
        return tx.accounts
    except ConfigError:
        return EMPTY_ACCOUNTS


class Account:
    def __init__(
        self, settings: Settings, *, stores: Stores | None = None, providers: Providers | None = None
    ) -> None:
        self.settings = settings
        self.stores = stores or open_stores(settings)
        self.providers = providers or Providers(timeout=settings.timeout)

    @property
    def provider(self) -> Provider:
        """The provider of the current settings (a saved login may belong to another)."""
        return self.providers.get(self.settings.issuer)

    def load(self) -> Credentials | None:
        return self.stores.load()

    def view(self, *, sync: bool = True) -> tuple[Credentials | None, CodexView]:
        return self.stores.view(sync=sync)

    def status(self) -> dict[str, object]:
        creds, codex = self.stores.view()
        return status_report(creds, config_path=str(self.settings.config_path), codex_cli=codex.report())

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        """Run one call from synchronous code, closing this loop's HTTP clients after it."""

        async def main() -> T:
            try:
                return await call
            finally:
                await self.providers.aclose()

        return asyncio.run(main())

    def accounts(self, active: Credentials | None | Literal[False] = False) -> list[AccountEntry]:
        """Every account: the active one first (its newest tokens, or `active` when the caller has
        just read them), then the saved ones (one stat, then the cached parse)."""
        creds = self.stores.view()[0] if active is False else active
        saved = self.stores.saved.load()
        entries = [AccountEntry(saved.active or default_name(creds), creds, True)] if creds else []
        return entries + [AccountEntry(a.name, a.credentials, False) for a in saved.saved]

    async def sign_in(self, creds: Credentials, *, name: str | None = None) -> str:
        """Make `creds` the active account, saved first; the account that was active is kept
        (another account) or its refresh token revoked (the same account, signed in again).
        Returns the account's name."""
        named, replaced = await asyncio.to_thread(self._activate, creds, name)
        for old in replaced:
            if old.refresh_token != creds.refresh_token:
                await self.revoke(old)
        return named

    async def save_key(self, key: str, *, name: str | None = None) -> Credentials:
        creds = Credentials.key(key)
        if name is None and (await asyncio.to_thread(self.view, sync=False))[0] == creds:
            return creds  # already the active key: nothing to write (a read-only home works too)
        await self.sign_in(creds, name=name)
        return creds

    def _activate(self, creds: Credentials, name: str | None) -> tuple[str, list[Credentials]]:
        with self.stores.transaction() as tx:
            accounts = tx.accounts
            active = tx.credentials
            saved = list(accounts.saved)
            replaced: list[Credentials] = []
            if active is not None and same_account(active, creds):
                replaced.append(active)
                name = name or accounts.active
            elif active is not None:
                saved.append(SavedAccount(accounts.active or default_name(active), active))
            for old in [a for a in saved if same_account(a.credentials, creds)]:
                saved.remove(old)
                replaced.append(old.credentials)
                name = name or old.name
            name = unique_name(name or default_name(creds), [a.name for a in saved])
            tx.save(creds)
            tx.save_accounts(AccountsFile(active=name, saved=tuple(saved)))
        return name, replaced

    async def sign_out(self, name: str | None = None, *, everything: bool = False) -> SignOut:
        """Sign out of the active account (default), of the saved account `name`, or of all:
        removed locally first (so a hung provider cannot keep anyone signed in), then revoked."""
        if not await asyncio.to_thread(self._anything_to_remove, name, everything):
            return SignOut(previous=None, revoked=None)  # nothing to sign out of: create nothing
        removed = await asyncio.to_thread(self._remove, name, everything)
        revoked: bool | None = None
        for creds in removed:
            outcome = await self.revoke(creds)
            if outcome is not None:
                revoked = outcome if revoked is None else revoked and outcome
        return SignOut(previous=removed[0] if removed else None, revoked=revoked, count=len(removed))

    def _anything_to_remove(self, name: str | None, everything: bool) -> bool:
        if not self.settings.codex_home.is_dir():
            return False
        if name is None and not everything:
            return self.view(sync=False)[0] is not None
        return True  # a name: the transaction says which account, or that there is none

    def _remove(self, name: str | None, everything: bool) -> list[Credentials]:
        with self.stores.transaction() as tx:
            active = tx.credentials
            if name is None and not everything:
                if active is None:
                    return []
                tx.save(None)
                accounts = _accounts_or_empty(tx)
                if accounts.active is not None or accounts.saved:
                    tx.save_accounts(AccountsFile(active=None, saved=accounts.saved))
                return [active]
            accounts = tx.accounts
            if everything:
                tx.save(None)
                tx.save_accounts(AccountsFile(active=None, saved=()))
                return ([active] if active else []) + [a.credentials for a in accounts.saved]
            assert name is not None
            target = find_account(accounts, active, name)
            if target is None:  # the active one
                tx.save(None)
                tx.save_accounts(AccountsFile(active=None, saved=accounts.saved))
                return [active] if active else []
            tx.save_accounts(
                AccountsFile(
                    active=accounts.active, saved=tuple(a for a in accounts.saved if a is not target)
                )
            )
            return [target.credentials]

    async def switch(self, name: str) -> AccountEntry:
        """Make a saved account the active one. The active one is put away with its newest tokens
        (perhaps rotated by the Codex CLI since); nothing is revoked; a switched-to account whose
        access token expired is refreshed under the locks."""
        if not self.settings.codex_home.is_dir():
            raise PortalError(f"no account named {name}; `codex-portal accounts` lists them")
        loop = asyncio.get_running_loop()

        def locked() -> AccountEntry:
            with self.stores.transaction() as tx:
                accounts = tx.accounts
                active = tx.credentials
                target = find_account(accounts, active, name)
                if target is None:
                    assert active is not None
                    return AccountEntry(accounts.active or default_name(active), active, True)
                saved = [a for a in accounts.saved if a is not target]
                if active is not None:
                    saved.append(SavedAccount(accounts.active or default_name(active), active))
                creds = target.credentials
                if needs_refresh(creds) and creds.refresh_token:
                    try:
                        creds = asyncio.run_coroutine_threadsafe(self._exchange(creds), loop).result()
                    except OAuthError as exc:
                        if exc.error != "invalid_grant":
                            raise
                        creds = replace(creds, refresh_token=None)  # dead: shown as expired
                    except ProviderError:
                        pass  # the provider is away: switched all the same, refreshed on next use
                tx.save(creds)
                tx.save_accounts(AccountsFile(active=target.name, saved=tuple(saved)))
                return AccountEntry(target.name, creds, True)

        return await asyncio.to_thread(locked)

    async def revoke(self, creds: Credentials) -> bool | None:
        """RFC 7009 revocation of `creds`' refresh token; True when the provider accepted it."""
        if creds.method != "oauth" or not creds.refresh_token:
            return None
        provider = self.providers.get(creds.issuer or self.settings.issuer)
        client_id = creds.client_id or self.settings.client_id
        try:
            return await asyncio.wait_for(
                provider.revoke(creds.refresh_token, client_id=client_id),
                timeout=self.settings.revoke_timeout,
            )
        except (TimeoutError, PortalError):
            return False

    async def token(self) -> str:
        """A valid access token (or the API key), refreshed under the locks first if needed."""
        return (await self.refresh()).secret

    async def refresh(self, *, force: bool = False, seen_access_token: str | None = None) -> Credentials:
        """Valid credentials, refreshed first when needed.

        `force` (the Refresh button) refreshes unless someone else already did since the caller
        looked, which `seen_access_token` tells. The locks are held in a worker thread while the
        exchange runs on this loop.
        """
        if not force:
            # Most calls need no refresh: answered from a read that locks and writes nothing (a
            # read-only CODEX_HOME works, and a mistyped one is not created).
            seen, _ = await asyncio.to_thread(self.view)  # in step where the home can be written
            if seen is None:
                raise NotSignedIn()
            if seen.method != "oauth" or not needs_refresh(seen):
                return seen
        loop = asyncio.get_running_loop()

        def locked() -> Credentials:
            with self.stores.transaction() as tx:
                creds = tx.credentials
                if creds is None:
                    raise NotSignedIn()
                wanted = force and seen_access_token in (None, creds.access_token)
                if creds.method != "oauth" or not (wanted or needs_refresh(creds)):
                    return creds
                if not creds.refresh_token:
                    raise SessionExpired()
                try:
                    fresh = asyncio.run_coroutine_threadsafe(self._exchange(creds), loop).result()
                except ProviderError as exc:
                    raise ProviderError(
                        f"could not refresh: {exc.message}; the saved tokens were kept"
                    ) from None
                except OAuthError as exc:
                    if exc.error != "invalid_grant":
                        raise
                    # The refresh token is dead: forget it, so status says "expired" and nobody retries it.
                    tx.save(replace(creds, refresh_token=None))
                    raise SessionExpired() from None
                tx.save(fresh)
                return fresh

        return await asyncio.to_thread(locked)

    async def _exchange(self, creds: Credentials) -> Credentials:
        """RFC 6749 section 6, at the issuer and client that issued the token."""
        from webapp.oauth import credentials_from_token, verify_id_token

        provider = self.providers.get(creds.issuer or self.settings.issuer)
        client_id = creds.client_id or self.settings.client_id
        assert creds.refresh_token is not None
        answer = await provider.token(
            {"grant_type": "refresh_token", "refresh_token": creds.refresh_token, "client_id": client_id}
        )
        fresh = credentials_from_token(answer, issuer=provider.issuer, client_id=client_id)
        email = creds.email
        if fresh.id_token and fresh.id_token != creds.id_token:
            # OIDC Core 12.2: a refreshed ID token is verified like the first (no nonce), for the same person.
            claims = await verify_id_token(provider, fresh.id_token, client_id=client_id, nonce=None)
            if creds.id_token and claims.get("sub") != creds.subject:
                raise ProviderError("the provider's refreshed ID token names another account")
            email = claim_email(claims) or email
        return replace(
            fresh,
            refresh_token=fresh.refresh_token or creds.refresh_token,  # not rotated: the old one stays valid
            id_token=fresh.id_token or creds.id_token,
            email=email,
        )


def needs_refresh(creds: Credentials, now: float | None = None) -> bool:
    if creds.method != "oauth" or creds.expires_at is None:
        return False
    return creds.expires_at - (time.time() if now is None else now) <= REFRESH_MARGIN


async def get_access_token(codex_home: Path | None = None) -> str:
    """A valid access token (or the API key), refreshed under the locks first if needed."""
    settings = Settings.from_env()
    if codex_home is not None:
        settings = settings.with_overrides(config_path=Path(codex_home) / "config.toml")
    account = Account(settings)
    try:
        return await account.token()
    finally:
        await account.providers.aclose()
