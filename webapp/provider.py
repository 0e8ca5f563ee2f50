"""Provider endpoints from OIDC / RFC 8414 discovery, fetched once per issuer.

The issuer must be https, or http on a loopback address (the test provider). Discovery documents
must name the same issuer they were fetched for (OIDC Discovery 4.3), so a wrong or hostile
document cannot send our tokens to another party.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from webapp.errors import ProviderError
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


_cache: dict[str, ProviderMetadata] = {}


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
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ProviderError(f"{what} {url!r} must be an https URL (plain http only on loopback)")


def issuer_key(issuer: str) -> str:
    return issuer.rstrip("/")


async def discover(issuer: str, *, client: httpx2.AsyncClient) -> ProviderMetadata:
    """The provider's endpoints, from its discovery document (cached for the process)."""
    key = issuer_key(issuer)
    if key not in _cache:
        _cache[key] = await _fetch_metadata(key, client=client)
    return _cache[key]


async def _fetch_metadata(issuer: str, *, client: httpx2.AsyncClient) -> ProviderMetadata:
    import httpx2

    check_url(issuer, what="issuer")
    problems: list[str] = []
    for path in WELL_KNOWN:
        try:
            async with deadline(client, what=f"discovery at {issuer}"):
                response = await client.get(issuer + path, headers={"Accept": "application/json"})
        except (httpx2.TimeoutException, httpx2.ConnectError, ProviderError) as exc:
            problems.append(
                f"{path}: {exc.message if isinstance(exc, ProviderError) else describe_http_error(exc)}"
            )
            break  # the provider is down or hanging: the other well-known address would wait as long
        except httpx2.HTTPError as exc:
            problems.append(f"{path}: {describe_http_error(exc)}")
            continue
        if response.status_code != 200:
            problems.append(f"{path}: HTTP {response.status_code}")
            continue
        return _parse_metadata(issuer, response)
    if issuer == DEFAULT_ISSUER:
        return ProviderMetadata(issuer=issuer, **{k: issuer + v for k, v in DEFAULT_PATHS.items()})
    raise ProviderError(f"could not discover the endpoints of {issuer} ({'; '.join(problems)})")


def _parse_metadata(issuer: str, response: httpx2.Response) -> ProviderMetadata:
    doc = parse_json_object(response, what="discovery document")
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


def parse_json_object(response: httpx2.Response, *, what: str) -> dict[str, Any]:
    """A JSON object from the provider, or a ProviderError that says what was wrong with it."""
    if len(response.content) > MAX_DOCUMENT:
        raise ProviderError(f"the provider's {what} is too large")
    try:
        value = response.json()
    except ValueError:
        raise ProviderError(
            f"the provider answered HTTP {response.status_code} with something that is not JSON "
            f"instead of its {what}"
        ) from None
    if not isinstance(value, dict):
        raise ProviderError(f"the provider's {what} is not a JSON object")
    return value


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


def http_client(timeout: float) -> httpx2.AsyncClient:
    """The one way we talk to a provider: bounded time, no redirects, TLS verified."""
    import httpx2

    return httpx2.AsyncClient(timeout=httpx2.Timeout(timeout), follow_redirects=False, verify=True)
