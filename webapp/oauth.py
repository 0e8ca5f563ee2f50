"""Browser sign-in: authorization code + PKCE S256 (RFC 6749 4.1, RFC 7636), with authlib's
request builders and the issuer's `Provider`.

The pending sign-in (state, verifier, nonce) stays in this process's memory, is used once, and
expires after ten minutes. The ID token, when the provider returns one, is verified (signature
against the provider's JWKS, iss, aud, exp, nonce) before anything is saved.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from webapp.credentials import Credentials, claim_email
from webapp.errors import LoginError, ProviderError
from webapp.provider import Provider, ProviderMetadata
from webapp.settings import DEFAULT_ISSUER, DEFAULT_SCOPE

if TYPE_CHECKING:
    from webapp.settings import Settings

LOGIN_TTL = 600.0
MAX_PENDING = 32
# What the Codex CLI asks the default issuer for, so the tokens are those `codex login` gets.
CODEX_SCOPE = "openid profile email offline_access api.connectors.read api.connectors.invoke"
CODEX_PARAMS = {
    "id_token_add_organizations": "true",
    "codex_cli_simplified_flow": "true",
    "originator": "codex_cli_rs",
}
MAX_EXPIRES_IN = 10 * 365 * 86400  # an access token said to live longer than this is clamped
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


@dataclass(frozen=True)
class LoginRequest:
    """What the person asked of a sign-in: a name for the account, and which account it must be
    (`login --account EMAIL`: the provider is told, and another account coming back is refused).
    `choose` asks the provider to show its account choice (adding an account beside the active one)."""

    name: str | None = None
    login_hint: str | None = None
    choose: bool = False


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
    request: LoginRequest = LoginRequest()


class PendingLogins:
    """One-time, expiring `state` -> PendingLogin, kept server-side."""

    def __init__(self, *, ttl: float = LOGIN_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._logins: dict[str, PendingLogin] = {}

    def new(self, settings: Settings, request: LoginRequest | None = None) -> PendingLogin:
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
            scope=request_scope(settings.issuer, settings.scope),
            created=self._clock(),
            request=request or LoginRequest(),
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


def request_scope(issuer: str, scope: str) -> str:
    """The default issuer gets the Codex CLI's own scope unless another was asked for."""
    return CODEX_SCOPE if issuer.rstrip("/") == DEFAULT_ISSUER and scope == DEFAULT_SCOPE else scope


def authorization_url(metadata: ProviderMetadata, login: PendingLogin) -> str:
    from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    extra = dict(CODEX_PARAMS) if login.issuer == DEFAULT_ISSUER else {}
    if login.request.login_hint:
        extra["login_hint"] = login.request.login_hint
    if login.request.choose or login.request.login_hint:
        extra["prompt"] = "login"  # the provider shows its sign-in, so another account can be chosen
    url: str = prepare_grant_uri(
        metadata.authorization_endpoint,
        login.client_id,
        "code",
        redirect_uri=login.redirect_uri,
        scope=login.scope,
        state=login.state,
        code_challenge=create_s256_code_challenge(login.verifier),
        code_challenge_method="S256",
        nonce=login.nonce,
        **extra,
    )
    return url


async def exchange_code(provider: Provider, login: PendingLogin, code: str) -> Credentials:
    """Trade the authorization code for tokens, verify the ID token, find the email."""
    token = await provider.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "client_id": login.client_id,
            "code_verifier": login.verifier,
        }
    )
    creds = credentials_from_token(token, issuer=login.issuer, client_id=login.client_id)
    creds = await identify(provider, creds, nonce=login.nonce)
    check_account(creds, login.request.login_hint)
    return creds


def check_account(creds: Credentials, expected: str | None) -> None:
    """`login --account EMAIL`: the account that came back must be the one asked for."""
    if expected and (creds.email or "").lower() != expected.lower():
        got = creds.email or "an account without an email"
        raise LoginError(f"the provider signed you in as {got}, not {expected}; nothing was saved")


async def identify(provider: Provider, creds: Credentials, *, nonce: str | None) -> Credentials:
    """Verify the ID token, if any, and find the account's email (from it, else from userinfo)."""
    email = None
    subject = None
    if creds.id_token:
        claims = await verify_id_token(provider, creds.id_token, client_id=creds.client_id or "", nonce=nonce)
        email, subject = claim_email(claims), claims["sub"]
    if email is None and creds.access_token:
        info = await provider.userinfo(creds.access_token)
        if info and subject is not None and info.get("sub") != subject:
            # OIDC Core 5.3.2: userinfo about someone else must not be used.
            raise LoginError("the provider's userinfo names another account than its ID token")
        email = claim_email(info)
    return dataclasses.replace(creds, email=email)


def credentials_from_token(token: dict[str, Any], *, issuer: str, client_id: str) -> Credentials:
    """A token endpoint's answer as a record (no email yet: `identify` finds it)."""
    access_token = token.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError("the provider's answer has no access token")
    token_type = token.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderError("the provider issued a token type other than Bearer")
    refresh_token = token.get("refresh_token")
    id_token = token.get("id_token")
    return Credentials(
        method="oauth",
        access_token=access_token,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=_expires_at(token.get("expires_in")),
        id_token=id_token if isinstance(id_token, str) and id_token else None,
        issuer=issuer,
        client_id=client_id,
    )


def _expires_at(expires_in: object) -> int | None:
    """RFC 6749 5.1: seconds from now; a number that is not a sane count of seconds is refused."""
    if expires_in is None:
        return None
    if isinstance(expires_in, str) and expires_in.strip().isdigit() and len(expires_in.strip()) < 12:
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in != expires_in:
        raise ProviderError("the provider's answer has an invalid expires_in")
    if expires_in in (float("inf"), float("-inf")):
        raise ProviderError("the provider's answer has an invalid expires_in")
    return int(time.time()) + int(max(0, min(expires_in, MAX_EXPIRES_IN)))


async def verify_id_token(
    provider: Provider, id_token: str, *, client_id: str, nonce: str | None
) -> dict[str, Any]:
    """OIDC Core 3.1.3.7: signature via the JWKS (refetched once for an unknown key), iss, aud, exp, nonce."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    metadata = await provider.metadata()
    if not metadata.jwks_uri:
        raise LoginError("the provider returned an ID token but publishes no keys to verify it")
    for refetch in (False, True):
        jwks = await provider.jwks(refetch=refetch)
        try:
            token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=ID_TOKEN_ALGORITHMS)  # type: ignore[arg-type]
            break
        except JoseError as exc:
            if not refetch and _is_unknown_key(exc):
                continue
            raise LoginError(f"the provider's ID token could not be verified ({exc.error})") from None
        except (ValueError, TypeError):
            raise LoginError("the provider's ID token could not be verified (malformed)") from None
    expected: dict[str, Any] = {
        "iss": {"essential": True, "value": metadata.issuer},
        "sub": {"essential": True},
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
    claims = dict(token.claims)
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise LoginError("the provider's ID token is not valid for this sign-in (invalid sub)")
    if isinstance(claims["aud"], list) and (len(claims["aud"]) > 1 or "azp" in claims):
        # OIDC Core 3.1.3.7 items 4-5: several audiences need an authorized party, and it is us.
        if claims.get("azp") != client_id:
            raise LoginError("the provider's ID token is not valid for this sign-in (azp)")
    return claims


def _is_unknown_key(exc: Exception) -> bool:
    return type(exc).__name__ in ("MissingKeyError", "InvalidKeyIdError")
