"""Browser sign-in: authorization code + PKCE S256 (RFC 6749 4.1, RFC 7636), with authlib.

The pending sign-in (state, verifier, nonce) stays in this process's memory, is used once, and
expires after ten minutes. The ID token, when the provider returns one, is verified (signature
against the provider's JWKS, iss, aud, exp, nonce) before anything is saved.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from webapp.errors import LoginError, OAuthError, ProviderError
from webapp.provider import (
    ProviderMetadata,
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

LOGIN_TTL = 600.0
MAX_PENDING = 32
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


@dataclass(frozen=True)
class PendingLogin:
    state: str = field(repr=False)
    verifier: str = field(repr=False)
    nonce: str = field(repr=False)
    issuer: str
    client_id: str
    redirect_uri: str
    scope: str
    created: float


@dataclass(frozen=True)
class LoginResult:
    tokens: OAuthTokens
    email: str | None


class PendingLogins:
    """One-time, expiring `state` -> PendingLogin, kept server-side."""

    def __init__(self, *, ttl: float = LOGIN_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._logins: dict[str, PendingLogin] = {}

    def new(self, settings: Settings) -> PendingLogin:
        self._expire()
        while len(self._logins) >= MAX_PENDING:
            self._logins.pop(next(iter(self._logins)))
        login = PendingLogin(
            state=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),
            nonce=secrets.token_urlsafe(32),
            issuer=settings.issuer.rstrip("/"),
            client_id=settings.client_id,
            redirect_uri=settings.redirect_uri,
            scope=settings.scope,
            created=self._clock(),
        )
        self._logins[login.state] = login
        return login

    def pop(self, state: str) -> PendingLogin | None:
        """The pending sign-in for `state`, removed so that it can never be used twice."""
        self._expire()
        return self._logins.pop(state, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._logins)

    def _expire(self) -> None:
        now = self._clock()
        for state in [s for s, login in self._logins.items() if now - login.created >= self._ttl]:
            del self._logins[state]


def token_client(
    client_id: str,
    timeout: float,
    *,
    redirect_uri: str | None = None,
    scope: str | None = None,
    transport: Any = None,
) -> Any:
    """authlib's client for a public client's token requests: PKCE S256, bounded time, no redirects,
    and only a 200 taken as a token (authlib reads any body, even a redirect's)."""
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    client = AsyncOAuth2Client(
        client_id=client_id,
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
        redirect_uri=redirect_uri,
        scope=scope,
        timeout=timeout,
        follow_redirects=False,
        **({"transport": transport} if transport is not None else {}),
    )
    client.register_compliance_hook("access_token_response", _only_200_or_error)
    client.register_compliance_hook("refresh_token_response", _only_200_or_error)
    return client


def _only_200_or_error(response: httpx2.Response) -> httpx2.Response:
    if response.status_code != 200 and response.status_code < 400:
        raise ProviderError(
            f"the provider's token endpoint answered HTTP {response.status_code} instead of a token"
        )
    return response


def _client(login: PendingLogin, timeout: float) -> Any:
    return token_client(login.client_id, timeout, redirect_uri=login.redirect_uri, scope=login.scope)


def authorization_url(metadata: ProviderMetadata, login: PendingLogin) -> str:
    client = _client(login, 10.0)
    url, _ = client.create_authorization_url(
        metadata.authorization_endpoint,
        state=login.state,
        code_verifier=login.verifier,
        nonce=login.nonce,
    )
    return str(url)


async def exchange_code(
    metadata: ProviderMetadata, login: PendingLogin, code: str, *, timeout: float
) -> LoginResult:
    """Trade the authorization code for tokens, verify the ID token, find the email."""
    async with _client(login, timeout) as client:
        token = await request_token(
            client,
            client.fetch_token(
                metadata.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=login.verifier,
            ),
        )
    tokens = tokens_from_response(token, issuer=login.issuer, client_id=login.client_id)
    return await identify(tokens, metadata, nonce=login.nonce, timeout=timeout)


async def identify(
    tokens: OAuthTokens, metadata: ProviderMetadata, *, nonce: str | None, timeout: float
) -> LoginResult:
    """Verify the ID token, if any, and find the account's email (from it, else from userinfo)."""
    email = None
    async with http_client(timeout) as client:
        if tokens.id_token:
            claims = await verify_id_token(
                tokens.id_token, metadata, client_id=tokens.client_id, nonce=nonce, client=client
            )
            email = _email(claims)
        if email is None and metadata.userinfo_endpoint:
            email = await fetch_userinfo_email(metadata.userinfo_endpoint, tokens.access_token, client=client)
    return LoginResult(tokens=tokens, email=email)


async def request_token(client: httpx2.AsyncClient, call: Awaitable[Any]) -> dict[str, Any]:
    """Await an authlib token call (within one overall deadline) and turn every way it fails into
    one of our errors."""
    import httpx2
    from authlib.integrations.base_client.errors import OAuthError as AuthlibOAuthError

    try:
        async with deadline(client, what="the provider's token endpoint"):
            token = await call
    except AuthlibOAuthError as exc:
        raise OAuthError(clean_text(str(exc.error), 64) or "error", clean_text(exc.description)) from None
    except httpx2.HTTPError as exc:
        raise ProviderError(f"the provider's token endpoint failed: {describe_http_error(exc)}") from None
    except (ValueError, TypeError):
        raise ProviderError("the provider's token endpoint answered something that is not a token") from None
    return dict(token)


def tokens_from_response(token: dict[str, Any], *, issuer: str, client_id: str) -> OAuthTokens:
    access_token = token.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError("the provider's answer has no access token")
    token_type = token.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderError("the provider issued a token type other than Bearer")
    expires_in = token.get("expires_in")
    expires_at = None
    if expires_in is not None:
        try:
            expires_at = int(time.time()) + int(expires_in)
        except (TypeError, ValueError):
            raise ProviderError("the provider's answer has an invalid expires_in") from None
    refresh_token = token.get("refresh_token")
    id_token = token.get("id_token")
    return OAuthTokens(
        access_token=access_token,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=expires_at,
        id_token=id_token if isinstance(id_token, str) and id_token else None,
        issuer=issuer,
        client_id=client_id,
    )


_jwks_cache: dict[str, dict[str, Any]] = {}


async def verify_id_token(
    id_token: str,
    metadata: ProviderMetadata,
    *,
    client_id: str,
    nonce: str | None,
    client: httpx2.AsyncClient,
) -> dict[str, Any]:
    """OIDC Core 3.1.3.7: signature via the JWKS (refetched once for an unknown key), iss, aud, exp, nonce."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    if not metadata.jwks_uri:
        raise LoginError("the provider returned an ID token but publishes no keys to verify it")
    for refetch in (False, True):
        jwks = await _fetch_jwks(metadata.jwks_uri, client=client, refetch=refetch)
        try:
            token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=ID_TOKEN_ALGORITHMS)  # type: ignore[arg-type]
            break
        except JoseError as exc:
            if not refetch and _is_unknown_key(exc):
                continue
            raise LoginError(f"the provider's ID token could not be verified ({exc.error})") from None
    expected: dict[str, Any] = {
        "iss": {"essential": True, "value": metadata.issuer},
        "aud": {"essential": True, "value": client_id},
        "exp": {"essential": True},
    }
    if nonce is not None:  # the device grant has no nonce (RFC 8628 has no front channel)
        expected["nonce"] = {"essential": True, "value": nonce}
    registry = jwt.JWTClaimsRegistry(leeway=60, **expected)
    try:
        registry.validate(token.claims)
    except JoseError as exc:
        raise LoginError(f"the provider's ID token is not valid for this sign-in ({exc.error})") from None
    return dict(token.claims)


def _is_unknown_key(exc: Exception) -> bool:
    return type(exc).__name__ in ("MissingKeyError", "InvalidKeyIdError")


async def _fetch_jwks(uri: str, *, client: httpx2.AsyncClient, refetch: bool) -> dict[str, Any]:
    import httpx2

    if refetch or uri not in _jwks_cache:
        try:
            async with deadline(client, what="fetching the provider's keys"):
                response = await client.get(uri)
        except httpx2.HTTPError as exc:
            raise ProviderError(
                f"the provider's keys could not be fetched: {describe_http_error(exc)}"
            ) from None
        jwks = parse_json_object(response, what="key set")
        if not isinstance(jwks.get("keys"), list):
            raise ProviderError("the provider's key set has no keys")
        _jwks_cache[uri] = jwks
    return _jwks_cache[uri]


async def fetch_userinfo_email(endpoint: str, access_token: str, *, client: httpx2.AsyncClient) -> str | None:
    """The email from userinfo; None when the provider will not say (the sign-in still counts)."""
    import httpx2

    try:
        response = await client.get(endpoint, headers={"Authorization": f"Bearer {access_token}"})
        return _email(parse_json_object(response, what="userinfo")) if response.status_code == 200 else None
    except (httpx2.HTTPError, ProviderError):
        return None


def _email(claims: dict[str, Any]) -> str | None:
    email = claims.get("email")
    return email if isinstance(email, str) and email else None
