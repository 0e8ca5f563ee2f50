"""The [auth] table of the Codex CLI's config.toml (SPEC section 1).

Reads use stdlib tomllib, cached on the file's identity. Writes take the sidecar lock, re-read the
file, change only our keys with tomlkit, check that nothing else changed, and replace the file
atomically (0600). tomlkit and filelock are imported only on the write path.
"""

from __future__ import annotations

import functools
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from webapp.errors import ConfigError, PortalError
from webapp.files import Identity, identity, make_dirs, read_text, reason, write_atomic

if TYPE_CHECKING:
    from webapp.tomledit import Values

OAUTH_KEYS = ("access_token", "refresh_token", "expires_at", "id_token", "issuer", "client_id")
API_KEY_MAX = 512
_OUR_KEYS = (*OAUTH_KEYS, "api_key")
_CACHE: dict[str, tuple[Identity, Credentials | None]] = {}


@dataclass(frozen=True)
class Credentials:
    method: Literal["oauth", "api_key"]
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: int | None = None
    id_token: str | None = field(default=None, repr=False)
    issuer: str | None = None
    client_id: str | None = None
    api_key: str | None = field(default=None, repr=False)

    @functools.cached_property
    def email(self) -> str | None:
        """The `email` claim of the ID token, whose signature was checked when it was saved."""
        email = unverified_claims(self.id_token).get("email")
        return email if isinstance(email, str) else None

    @property
    def api_key_hint(self) -> str | None:
        if self.api_key is None:
            return None
        if len(self.api_key) < 16:
            return "…"
        return ("sk-…" if self.api_key.startswith("sk-") else "…") + self.api_key[-4:]

    def expired(self, now: float | None = None) -> bool:
        if self.method != "oauth" or self.expires_at is None:
            return False
        return self.expires_at <= (time.time() if now is None else now)


def unverified_claims(id_token: str | None) -> dict[str, Any]:
    """The payload of a JWT we verified when we saved it; {} when it cannot be read."""
    import base64
    import json

    try:
        payload = (id_token or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


@dataclass(frozen=True)
class OAuthTokens:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: int | None
    id_token: str | None = field(repr=False)
    issuer: str = field(repr=False)
    client_id: str = field(repr=False)


def validate_api_key(raw: str) -> str:
    """The trimmed key; it must fit on one line of the TOML file and in an HTTP header."""
    key = raw.strip()
    if not key:
        raise PortalError("the API key is empty")
    if len(key) > API_KEY_MAX:
        raise PortalError(f"the API key is longer than {API_KEY_MAX} characters")
    if not all("\x21" <= char <= "\x7e" for char in key):
        raise PortalError("the API key may contain only visible ASCII characters (no spaces or line breaks)")
    return key


class CredentialStore:
    def __init__(self, path: Path, *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout

    def load(self) -> Credentials | None:
        cached = _CACHE.get(str(self.path))
        if cached is not None:
            try:
                if identity(os.stat(self.path)) == cached[0]:
                    return cached[1]  # one stat() instead of open + fstat + read + decode
            except OSError:
                pass  # gone or unreadable: _read below says which
        seen, text = read_text(self.path)
        if seen is None:
            return None
        cached = _CACHE.get(str(self.path))
        if cached is not None and cached[0] == seen:
            return cached[1]
        credentials = _credentials(self.path, _parse(self.path, text))
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[str(self.path)] = (seen, credentials)
        return credentials

    def save_oauth(self, tokens: OAuthTokens) -> Credentials | None:
        return self._change(lambda tx: tx.save_oauth(tokens))

    def save_api_key(self, key: str) -> Credentials | None:
        key = validate_api_key(key)
        return self._change(lambda tx: tx.save_api_key(key))

    def clear(self) -> Credentials | None:
        if not self.path.parent.is_dir():
            return None  # nothing to sign out of, and no reason to create the directory
        return self._change(Transaction.clear)

    def _change(self, change: Callable[[Transaction], None]) -> Credentials | None:
        """One transaction; returns the credentials it replaced."""
        with self.transaction() as tx:
            previous = tx.credentials
            change(tx)
        return previous

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Hold the sidecar lock (flock, which other tools can take too) for the whole block."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.lock_path), mode=0o600, timeout=self.lock_timeout)
        try:
            make_dirs(self.path.parent)
            lock.acquire()
        except Timeout:
            raise ConfigError(f"{self.path} is locked by another process") from None
        except OSError as exc:
            raise ConfigError(f"cannot lock {self.lock_path}: {reason(exc)}") from None
        try:
            yield Transaction(self.path)
        finally:
            lock.release()


class Transaction:
    """The file read fresh under the lock; each change re-reads it and is written at once."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.credentials = _credentials(path, _parse(path, read_text(path)[1]))

    def save_oauth(self, tokens: OAuthTokens) -> None:
        values: dict[str, str | int | None] = {key: getattr(tokens, key) for key in OAUTH_KEYS}
        self._apply({**values, "api_key": None})

    def save_api_key(self, key: str) -> None:
        self._apply({"api_key": validate_api_key(key), **dict.fromkeys(OAUTH_KEYS)})

    def clear(self) -> None:
        self._apply(dict.fromkeys(_OUR_KEYS))

    def _apply(self, values: Values) -> None:
        from webapp.tomledit import edit_auth

        text = read_text(self._path)[1]
        before = _parse(self._path, text)
        _credentials(self._path, before)  # a key of the wrong type is reported, not overwritten
        new = edit_auth(self._path, text, values)
        self.credentials = _credentials(self._path, _verify(self._path, before, new, values))
        try:
            if new != text:
                write_atomic(self._path, new)
            elif self.credentials is not None:
                os.chmod(os.path.realpath(self._path), 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write {self._path}: {reason(exc)}") from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _credentials(path: Path, data: Mapping[str, Any]) -> Credentials | None:
    auth = data.get("auth")
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise ConfigError(f"{path}: auth must be a table")
    values: dict[str, Any] = {"expires_at": _expires_at(path, auth.get("expires_at"))}
    for key in _OUR_KEYS:
        if key != "expires_at" and auth.get(key) is not None and not isinstance(auth[key], str):
            raise ConfigError(f"{path}: auth.{key} must be a string")
        values.setdefault(key, auth.get(key) or None)
    if values["access_token"]:
        return Credentials(method="oauth", **{**values, "api_key": None})
    if values["api_key"]:
        return Credentials(method="api_key", api_key=values["api_key"])
    return None


def _expires_at(path: Path, value: object) -> int | None:
    if isinstance(value, str):
        with suppress(ValueError):
            value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: auth.expires_at must be seconds since the epoch or an RFC 3339 date-time")


def _verify(path: Path, before: dict[str, Any], new: str, values: Values) -> dict[str, Any]:
    """The new text parsed, if it differs from before in our keys only: a guard against editor bugs."""
    refusal = ConfigError(f"refusing to write {path}: the edit would change more than the [auth] keys")
    try:
        after = tomllib.loads(new.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError:
        raise refusal from None
    if _others(before) != _others(after) or any(_auth(after).get(k) != v for k, v in values.items()):
        raise refusal
    return after


def _auth(data: Mapping[str, Any]) -> dict[str, Any]:
    auth = data.get("auth")
    return auth if isinstance(auth, dict) else {}


def _others(data: Mapping[str, Any]) -> str:
    """Everything but our keys, as text (so that NaN equals NaN)."""
    ours = {key: value for key, value in _auth(data).items() if key not in _OUR_KEYS}
    return repr(({key: value for key, value in data.items() if key != "auth"}, ours))


def status_report(
    creds: Credentials | None, *, config_path: str, now: float | None = None
) -> dict[str, object]:
    """The status object of SPEC section 2, shared by `status --json` and GET /api/status.

    Credentials that expired and cannot be refreshed are not a sign-in: `signed_in` is false, and
    the other keys still say what the file holds.
    """
    expired = creds.expired(now) if creds else False
    return {
        "signed_in": creds is not None and not (expired and not creds.refresh_token),
        "method": creds.method if creds else None,
        "expires_at": creds.expires_at if creds else None,
        "expired": expired,
        "email": creds.email if creds else None,
        "api_key_hint": creds.api_key_hint if creds else None,
        "config_path": config_path,
    }
