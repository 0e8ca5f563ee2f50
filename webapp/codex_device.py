"""Sign-in with a code for issuers without RFC 8628: the Codex CLI's own device protocol.

The default issuer publishes no RFC 8628 endpoint; the Codex CLI (codex-rs/login/src/
device_code_auth.rs) signs in with a code through these calls, which this module makes the same way:

1. POST {issuer}/api/accounts/deviceauth/usercode, JSON {"client_id"} -> {"device_auth_id",
   "user_code" (or "usercode"), "interval" (a number, or a numeric string)}. 404: not offered.
2. The person opens {issuer}/codex/device and enters the code.
3. POST {issuer}/api/accounts/deviceauth/token, JSON {"device_auth_id", "user_code"}, every
   `interval` seconds: 403 or 404 while the person has not finished; then 200 with
   {"authorization_code", "code_verifier", "code_challenge"}. 15 minutes at most.
4. That code is a PKCE authorization code: it is exchanged at the token endpoint, form-encoded,
   with grant_type=authorization_code, redirect_uri={issuer}/deviceauth/callback, the client id
   and that code_verifier. The ID token that comes back is verified like any other (no nonce:
   there is no front channel).

As for RFC 8628 (webapp.device): the interval is kept within 1..60 s, the code is stripped of
control characters before a page or a terminal shows it, every call has one deadline and a byte
cap, and polling backs off on a network error or a 5xx instead of giving up.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Awaitable, Callable

from webapp.credentials import Credentials, printable
from webapp.device import MAX_LIFETIME, DeviceAuthorization, Wait, bounded_interval, poll
from webapp.errors import ProviderError
from webapp.oauth import credentials_from_token
from webapp.provider import Provider, check_url

PROTOCOL = "codex"
USERCODE_PATH = "/api/accounts/deviceauth/usercode"
TOKEN_PATH = "/api/accounts/deviceauth/token"
VERIFICATION_PATH = "/codex/device"
CALLBACK_PATH = "/deviceauth/callback"
PENDING = frozenset({403, 404})  # the person has not finished yet
MAX_ID = 1024
_NUMBER = re.compile(r"\s*\d{1,6}(\.\d{1,6})?\s*")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 section 4.1


class DeviceUnavailable(ProviderError):
    """The issuer offers no sign-in with a code: no RFC 8628 endpoint, and the Codex CLI's device
    protocol is not there either (404, as the Codex CLI reads it)."""


def _what(provider: Provider) -> str:
    return f"the Codex CLI's device sign-in at {provider.issuer}"


async def start_codex_device_flow(provider: Provider, *, client_id: str) -> DeviceAuthorization:
    """Step 1: a user code for the person, and the id to poll with."""
    what = _what(provider)
    response = await provider.post_json(provider.issuer + USERCODE_PATH, {"client_id": client_id}, what=what)
    if response.status == 404:
        raise DeviceUnavailable(
            f"{provider.issuer} does not offer sign-in with a code: it has no device authorization "
            "endpoint (RFC 8628) and does not answer the Codex CLI's device protocol; sign in in a "
            "browser instead"
        )
    if response.status != 200:
        raise ProviderError(f"{what} answered HTTP {response.status}; try again later")
    body = response.json_object(what="device code")
    device_auth_id = body.get("device_auth_id")
    raw_code = body.get("user_code", body.get("usercode"))
    user_code = printable(raw_code, limit=64)
    if (
        not isinstance(device_auth_id, str)
        or not device_auth_id
        or len(device_auth_id) > MAX_ID
        or not user_code
    ):
        raise ProviderError(f"{what} answered without a device id or a user code")
    try:
        interval = bounded_interval(_number(body.get("interval")))
    except ValueError:
        raise ProviderError(f"{what} answered an interval that is not a number") from None
    return DeviceAuthorization(
        device_code=device_auth_id,
        user_code=user_code,
        verification_uri=check_url(provider.issuer + VERIFICATION_PATH, what="the verification URL"),
        verification_uri_complete=None,
        expires_in=MAX_LIFETIME,  # the Codex CLI waits 15 minutes
        interval=interval,
        started=time.monotonic(),
        protocol=PROTOCOL,
    )


def _number(value: object) -> object:
    """`interval` as the Codex CLI's server sends it: a number, or a numeric string ("5")."""
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            raise ValueError("interval")
        return float(value)
    return value


async def poll_codex_device(
    provider: Provider,
    device: DeviceAuthorization,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, str]:
    """Step 3: poll until the person has finished; (authorization code, PKCE verifier)."""
    what = _what(provider)
    url = provider.issuer + TOKEN_PATH
    body = {"device_auth_id": device.device_code, "user_code": device.user_code}

    async def ask() -> tuple[str, str] | Wait:
        try:
            response = await provider.post_json(url, body, what=what)
        except ProviderError:
            return Wait.RETRY  # the network or the issuer is down
        if response.status in PENDING:
            return Wait.PENDING
        if response.status >= 500 or response.status == 429:
            return Wait.RETRY
        if response.status != 200:
            raise ProviderError(f"{what} answered HTTP {response.status}; start again")
        return _code_and_verifier(response.json_object(what="device sign-in answer"), what=what)

    return await poll(device, ask, sleep=sleep, clock=clock)


def _code_and_verifier(answer: dict[str, object], *, what: str) -> tuple[str, str]:
    from authlib.oauth2.rfc7636 import create_s256_code_challenge  # (as oauth.py: not at start)

    code = answer.get("authorization_code")
    verifier = answer.get("code_verifier")
    if not isinstance(code, str) or not code or len(code) > 4096:
        raise ProviderError(f"{what} answered without an authorization code")
    if not isinstance(verifier, str) or not _VERIFIER.fullmatch(verifier):
        raise ProviderError(f"{what} answered without a valid PKCE code verifier")
    challenge = answer.get("code_challenge")
    if challenge is not None and not (
        isinstance(challenge, str) and hmac.compare_digest(challenge, create_s256_code_challenge(verifier))
    ):
        raise ProviderError(f"{what} answered a code verifier that does not match its challenge")
    return code, verifier


async def complete_codex_device_flow(
    provider: Provider, device: DeviceAuthorization, *, client_id: str
) -> Credentials:
    """Steps 3 and 4: poll, then exchange the code with its verifier (the caller verifies the
    ID token, as for every sign-in)."""
    code, verifier = await poll_codex_device(provider, device)
    token = await provider.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": provider.issuer + CALLBACK_PATH,
            "client_id": client_id,
            "code_verifier": verifier,
        }
    )
    return credentials_from_token(token, issuer=provider.issuer, client_id=client_id)
