"""One `Provider` per issuer: its HTTP client, discovery, keys, token endpoint and error mapping.

Endpoints come from OIDC / RFC 8414 discovery, fetched once. The issuer must be https, or http on a
loopback address (the test provider). Discovery documents must name the same issuer they were
fetched for (OIDC Discovery 4.3), so a wrong or hostile document cannot send our tokens to another
party. Every exchange has one overall deadline; no redirect is followed; TLS is always verified.
Every way a provider fails becomes a `ProviderError` or, for an RFC 6749 error, an `OAuthError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from webapp.errors import OAuthError, ProviderError
from webapp.settings import DEFAULT_ISSUER

if TYPE_CHECKING:
    import httpx2

WELL_KNOWN = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
# The Codex CLI's own paths, used for its issuer when discovery is unavailable.
DEFAULT_PATHS = {
    "authorization_endpoint": "/oauth/authorize",
    "token_endpoint": "/oauth/token",
    "revocation_endpoint": "/oauth/revoke",
}
MAX_DOCUMENT = 256 * 1024
_RFC6749_TEXT = re.compile(r"[\x20\x21\x23-\x5B\x5D-\x7E]+")


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    jwks_uri: str | None = None


def is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, what: str) -> str:
    """A provider URL must be https, or http on loopback; anything else is refused."""
    if not all("\x21" <= ch <= "\x7e" for ch in url):
        raise ProviderError(f"{what} is not a plain URL (it holds spaces or control characters)")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ProviderError(f"{what} {url!r} must be an https URL (plain http only on loopback)")


def issuer_key(issuer: str) -> str:
    return issuer.rstrip("/")


async def _fetch_metadata(issuer: str, *, client: httpx2.AsyncClient) -> ProviderMetadata:
    import httpx2

    check_url(issuer, what="issuer")
    problems: list[str] = []
    for path in WELL_KNOWN:
        try:
            response = await fetch(client, "GET", issuer + path, what=f"discovery at {issuer}")
        except (httpx2.TimeoutException, httpx2.ConnectError, ProviderError) as exc:
            problems.append(
                f"{path}: {exc.message if isinstance(exc, ProviderError) else describe_http_error(exc)}"
            )
            break  # the provider is down or hanging: the other well-known address would wait as long
        except httpx2.HTTPError as exc:
            problems.append(f"{path}: {describe_http_error(exc)}")
            continue
        if response.status != 200:
            problems.append(f"{path}: HTTP {response.status}")
            continue
        return _parse_metadata(issuer, response)
    if issuer == DEFAULT_ISSUER:
        return ProviderMetadata(issuer=issuer, **{k: issuer + v for k, v in DEFAULT_PATHS.items()})
    raise ProviderError(f"could not discover the endpoints of {issuer} ({'; '.join(problems)})")


def _parse_metadata(issuer: str, response: Answer) -> ProviderMetadata:
    doc = response.json_object(what="discovery document")
    if issuer_key(str(doc.get("issuer", ""))) != issuer:
        raise ProviderError(f"the discovery document of {issuer} names another issuer")
    fields: dict[str, str | None] = {}
    for name in ProviderMetadata.__dataclass_fields__:
        value = doc.get(name)
        if name == "issuer":
            continue
        if value is not None and not isinstance(value, str):
            raise ProviderError(f"the discovery document of {issuer} has an invalid {name}")
        fields[name] = check_url(value, what=name) if value else None
    if not fields["authorization_endpoint"] or not fields["token_endpoint"]:
        raise ProviderError(f"the discovery document of {issuer} lacks an authorization or token endpoint")
    return ProviderMetadata(issuer=issuer, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Answer:
    """A provider's answer, read whole but never past MAX_DOCUMENT bytes."""

    status: int
    body: bytes

    def json_object(self, *, what: str) -> dict[str, Any]:
        """A JSON object, or a ProviderError that says what was wrong with it."""
        try:
            value = json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: 100,000 "[" in a row
            raise ProviderError(
                f"the provider answered HTTP {self.status} with something that is not JSON "
                f"instead of its {what}"
            ) from None
        if not isinstance(value, dict):
            raise ProviderError(f"the provider's {what} is not a JSON object")
        return value


async def fetch(
    client: httpx2.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    json_body: dict[str, str] | None = None,
) -> Answer:
    """One request within one deadline, its answer streamed up to MAX_DOCUMENT bytes (a provider
    cannot make us hold more). httpx2's own errors pass through for the caller to describe.
    `data` is sent form-encoded, `json_body` as JSON."""
    async with deadline(client, what=what):
        request = client.build_request(
            method,
            url,
            data=data,
            json=json_body,
            headers={"Accept": "application/json", **(headers or {})},
        )
        response = await client.send(request, stream=True)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT:
                    raise ProviderError(f"the provider's answer to {what} is too large")
        finally:
            await response.aclose()
    return Answer(response.status_code, bytes(body))


def describe_http_error(exc: Exception) -> str:
    import httpx2

    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx2.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


@contextlib.asynccontextmanager
async def deadline(client: httpx2.AsyncClient, *, what: str) -> AsyncIterator[None]:
    """One overall deadline (the client's read timeout) for a whole exchange: httpx's timeouts are
    per read, so a provider trickling its answer a byte at a time would otherwise never time out."""
    try:
        async with asyncio.timeout(client.timeout.read or 10.0):
            yield
    except TimeoutError:
        raise ProviderError(f"{what} timed out") from None


def clean_text(value: object, limit: int = 200) -> str | None:
    """A provider's error code or description, fit to show, or None. RFC 6749 section 5.2 allows
    only printable ASCII without '"' and '\\' there, so anything else (line breaks, terminal
    escapes, a fake traceback) is not shown at all."""
    if not isinstance(value, str) or not _RFC6749_TEXT.fullmatch(value):
        return None
    return value[:limit]


def http_client(timeout: float, transport: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncClient:
    """The one way we talk to a provider: bounded time, no redirects, TLS verified."""
    import httpx2

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout), follow_redirects=False, verify=True, transport=transport
    )


class Provider:
    """An issuer, as the portal talks to it. Its HTTP client is made once per event loop (a client
    belongs to the loop that made it) and closed by `aclose`; the discovery document and the key
    set are kept for the provider's life."""

    def __init__(
        self,
        issuer: str,
        *,
        timeout: float = 10.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        metadata: ProviderMetadata | None = None,
    ) -> None:
        self.issuer = issuer_key(issuer)
        self.timeout = timeout
        self._transport = transport
        self._clients: dict[asyncio.AbstractEventLoop, httpx2.AsyncClient] = {}
        self._metadata = metadata
        self._jwks: dict[str, Any] | None = None

    @property
    def client(self) -> httpx2.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = http_client(self.timeout, self._transport)
        return client

    async def prepare(self) -> None:
        """Build this loop's client in a worker thread: httpx2's import and its TLS context cost
        ~60 ms of CPU, which on the event loop would hold up every page by that much."""
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            client = await asyncio.to_thread(http_client, self.timeout, self._transport)
            if self._clients.setdefault(loop, client) is not client:
                await client.aclose()

    async def aclose(self) -> None:
        """Close this loop's client (call it before the loop ends)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    @property
    def known_metadata(self) -> ProviderMetadata | None:
        return self._metadata

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is None:
            self._metadata = await _fetch_metadata(self.issuer, client=self.client)
        return self._metadata

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        json_body: dict[str, str] | None = None,
    ) -> Answer:
        """One exchange (`fetch`); network failures become a ProviderError naming `what`."""
        import httpx2

        try:
            return await fetch(
                self.client, method, url, what=what, data=data, headers=headers, json_body=json_body
            )
        except httpx2.HTTPError as exc:
            raise ProviderError(f"{what} failed: {describe_http_error(exc)}") from None

    async def post_form(self, url: str, data: dict[str, str], *, what: str) -> Answer:
        return await self.request("POST", url, what=what, data=data)

    async def post_json(self, url: str, body: dict[str, str], *, what: str) -> Answer:
        """A POST whose body is a JSON object (the Codex CLI's device protocol speaks JSON)."""
        return await self.request("POST", url, what=what, json_body=body)

    async def token(self, data: dict[str, str]) -> dict[str, Any]:
        """A token request (RFC 6749 sections 4.1.3, 6; RFC 8628 3.4): the answer, or the error."""
        metadata = await self.metadata()
        what = "the provider's token endpoint"
        response = await self.post_form(metadata.token_endpoint, data, what=what)
        if response.status == 200:
            try:
                return response.json_object(what="token")
            except ProviderError:
                raise ProviderError(f"{what} answered something that is not a token") from None
        raise_oauth_error(response, what=what)

    async def jwks(self, *, refetch: bool) -> dict[str, Any]:
        metadata = await self.metadata()
        if metadata.jwks_uri is None:
            raise ProviderError("the provider publishes no keys")
        if refetch or self._jwks is None:
            response = await self.request("GET", metadata.jwks_uri, what="fetching the provider's keys")
            jwks = response.json_object(what="key set")
            if not isinstance(jwks.get("keys"), list):
                raise ProviderError("the provider's key set has no keys")
            self._jwks = jwks
        return self._jwks

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The userinfo claims; {} when the provider will not say (the sign-in still counts)."""
        endpoint = (await self.metadata()).userinfo_endpoint
        if not endpoint:
            return {}
        bearer = {"Authorization": f"Bearer {access_token}"}
        try:
            response = await self.request("GET", endpoint, what="the provider's userinfo", headers=bearer)
            return response.json_object(what="userinfo") if response.status == 200 else {}
        except ProviderError:
            return {}

    async def revoke(self, refresh_token: str, *, client_id: str) -> bool:
        """RFC 7009: True when the provider accepted the revocation."""
        metadata = await self.metadata()
        if not metadata.revocation_endpoint:
            return False
        data = {"token": refresh_token, "token_type_hint": "refresh_token", "client_id": client_id}
        response = await self.post_form(metadata.revocation_endpoint, data, what="revocation")
        return response.status == 200


def raise_oauth_error(response: Answer, *, what: str) -> NoReturn:
    """An error answer: the RFC 6749 error it carries, or a ProviderError naming its status."""
    if response.status < 400:
        raise ProviderError(f"{what} answered HTTP {response.status} instead of a token")
    try:
        body = response.json_object(what="error")
    except ProviderError:
        body = {}
    if not isinstance(body.get("error"), str):
        raise ProviderError(f"{what} failed: HTTP {response.status}")
    raise OAuthError(clean_text(body["error"], 64) or "error", clean_text(body.get("error_description")))


class Providers:
    """The providers this process talks to, one per issuer (settings' and those saved with tokens)."""

    def __init__(self, *, timeout: float, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self._timeout = timeout
        self._transport = transport
        self._providers: dict[str, Provider] = {}

    def get(self, issuer: str) -> Provider:
        key = issuer_key(issuer)
        if key not in self._providers:
            self._providers[key] = Provider(key, timeout=self._timeout, transport=self._transport)
        return self._providers[key]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
