"""The `[auth]` table of `$CODEX_HOME/config.toml`: the portal's contract (SPEC section 1).

Reads use stdlib tomllib, cached on the file's identity. Writes take the sidecar lock, re-read the
file, change only our keys with tomlkit, check that nothing else changed, and replace the file
atomically (0600). tomlkit and filelock are imported only on the write path.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webapp.credentials import Credentials, claim_email, unverified_claims, validate_api_key
from webapp.errors import ConfigError
from webapp.files import ParsedFile, read_text, reason, write_atomic
from webapp.stores.protocol import LockedFile

if TYPE_CHECKING:
    from webapp.tomledit import Values

OAUTH_KEYS = ("access_token", "refresh_token", "expires_at", "id_token", "issuer", "client_id")
# `email` is saved only when the ID token does not carry it (the provider told it through userinfo).
_OUR_KEYS = (*OAUTH_KEYS, "email", "api_key")
STORE_SETTING = "cli_auth_credentials_store"  # where the Codex CLI keeps its login (SPEC section 7)


class ConfigTomlStore(LockedFile):
    """`[auth]` in config.toml; also reads the file's `cli_auth_credentials_store` setting."""

    name = "config.toml"

    def __init__(self, path: Path, *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self._file: ParsedFile[tuple[Credentials | None, object]] = ParsedFile(
            self.path, partial(_read_both, self.path), (None, None)
        )

    def load(self) -> Credentials | None:
        return self._file.get()[0]

    def codex_store_setting(self) -> object:
        """The Codex CLI's `cli_auth_credentials_store` as written (None when absent)."""
        return self._file.get()[1]

    def read(self) -> Credentials | None:
        return _credentials(self.path, _parse(self.path, read_text(self.path)[1]))

    def write(self, creds: Credentials | None) -> None:
        """Our keys set to `creds` (None: removed); the caller holds the lock."""
        from webapp.tomledit import edit_auth

        values = _values(creds)
        # The symlink is resolved once: the file read is the file replaced, even if the link is
        # pointed elsewhere meanwhile.
        target = Path(os.path.realpath(self.path))
        text = read_text(target)[1]
        before = _parse(self.path, text)
        _credentials(self.path, before)  # a key of the wrong type is reported, not overwritten
        new = edit_auth(self.path, text, values)
        _verify(self.path, before, new, values)
        try:
            if new != text:
                write_atomic(target, new)
            elif creds is not None:
                os.chmod(target, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {reason(exc)}") from None

    def save(self, creds: Credentials | None) -> Credentials | None:
        """One whole transaction (for tools and tests); returns what it replaced."""
        with self.transaction() as tx:
            previous = tx.credentials
            tx.save(creds)
        return previous

    def save_api_key(self, key: str) -> Credentials | None:
        return self.save(Credentials.key(key))

    def clear(self) -> Credentials | None:
        if not self.path.parent.is_dir():
            return None  # nothing to sign out of, and no reason to create the directory
        return self.save(None)


def _values(creds: Credentials | None) -> Values:
    if creds is None:
        return dict.fromkeys(_OUR_KEYS)
    if creds.method == "api_key":
        return {"api_key": validate_api_key(creds.api_key or ""), **dict.fromkeys((*OAUTH_KEYS, "email"))}
    values: dict[str, str | int | None] = {key: getattr(creds, key) for key in OAUTH_KEYS}
    told = claim_email(unverified_claims(creds.id_token))
    return {**values, "email": creds.email if creds.email != told else None, "api_key": None}


def _read_both(path: Path, text: str) -> tuple[Credentials | None, object]:
    data = _parse(path, text)
    return _credentials(path, data), data.get(STORE_SETTING)


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
        return Credentials.oauth(**{k: v for k, v in values.items() if k != "api_key"})
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


def _verify(path: Path, before: dict[str, Any], new: str, values: Values) -> None:
    """The new text parsed, if it differs from before in our keys only: a guard against editor bugs."""
    refusal = ConfigError(f"refusing to write {path}: the edit would change more than the [auth] keys")
    try:
        after = tomllib.loads(new.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError:
        raise refusal from None
    if _others(before) != _others(after) or any(_auth(after).get(k) != v for k, v in values.items()):
        raise refusal


def _auth(data: Mapping[str, Any]) -> dict[str, Any]:
    auth = data.get("auth")
    return auth if isinstance(auth, dict) else {}


def _others(data: Mapping[str, Any]) -> str:
    """Everything but our keys, as text (so that NaN equals NaN)."""
    ours = {key: value for key, value in _auth(data).items() if key not in _OUR_KEYS}
    return repr(({key: value for key, value in data.items() if key != "auth"}, ours))
