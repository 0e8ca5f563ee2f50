"""`$CODEX_HOME/auth.json`: the file the Codex CLI itself reads and writes (SPEC section 7).

    {"auth_mode": "chatgpt", "OPENAI_API_KEY": null,
     "tokens": {"id_token": JWT, "access_token": ..., "refresh_token": ..., "account_id": ...},
     "last_refresh": "2026-12-05T06:50:09.981602Z"}
    {"auth_mode": "apikey", "OPENAI_API_KEY": "sk-..."}

Writes hold `$CODEX_HOME/auth.lock`, the flock the Codex CLI takes before it writes, keep every key
we do not know, and replace the file atomically (0600, a symlink kept). A file that does not parse
is never overwritten. Removing the login removes the file, as `codex logout` does.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webapp.credentials import Credentials, unverified_claims, validate_api_key
from webapp.errors import ConfigError, PortalError
from webapp.files import ParsedFile, read_text, reason, write_atomic
from webapp.settings import DEFAULT_CLIENT_ID, DEFAULT_ISSUER
from webapp.stores.protocol import LockedFile

MAX_EXPIRES_AT = 2**53  # a JWT `exp` past this is nonsense; TOML and JSON readers can hold it


class AuthJsonStore(LockedFile):
    name = "auth.json"

    def __init__(self, codex_home: Path, *, lock_timeout: float = 30.0) -> None:
        self.path = Path(codex_home) / "auth.json"
        self.lock_path = Path(codex_home) / "auth.lock"
        self.lock_timeout = lock_timeout
        self._file: ParsedFile[Credentials | None] = ParsedFile(self.path, self._credentials_of, None)

    def load(self) -> Credentials | None:
        return self._file.get()

    def _credentials_of(self, text: str) -> Credentials | None:
        return _credentials(self.path, _parse(self.path, text))

    def read(self) -> Credentials | None:
        seen, text = read_text(self.path)
        return None if seen is None else self._credentials_of(text)

    def write(self, creds: Credentials | None) -> None:
        target = Path(os.path.realpath(self.path))  # resolved once: the file read is the one replaced
        seen, text = read_text(target)
        data = _parse(self.path, text) if seen is not None else {}
        try:
            if creds is None:
                if seen is not None:
                    # Through a symlink, the file it names goes (the secrets are there); the link
                    # stays, dangling, so the person's setup is kept for the next sign-in.
                    os.unlink(target)
                return
            write_atomic(target, json.dumps(_document(data, creds), indent=2))
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {reason(exc)}") from None


def can_hold(creds: Credentials) -> bool:
    """The Codex CLI parses the ID token as a JWT: without one it cannot load the file."""
    return creds.method == "api_key" or bool(unverified_claims(creds.id_token))


def _document(data: dict[str, Any], creds: Credentials) -> dict[str, Any]:
    """`data` (what the file held, unknown keys and all) with our login in the Codex CLI's format."""
    doc = dict(data)
    if creds.method == "api_key":
        doc.update(auth_mode="apikey", OPENAI_API_KEY=creds.api_key)
        doc.pop("tokens", None)
        doc.pop("last_refresh", None)
        return doc
    if not can_hold(creds):
        raise PortalError("the Codex CLI cannot use this sign-in: the provider issued no ID token")
    old = data.get("tokens")
    tokens = dict(old) if isinstance(old, dict) else {}
    tokens.update(
        id_token=creds.id_token,
        access_token=creds.access_token,
        refresh_token=creds.refresh_token or "",
        account_id=creds.account_id,
    )
    doc.update(auth_mode="chatgpt", OPENAI_API_KEY=None, tokens=tokens)
    if tokens != old or "last_refresh" not in doc:
        doc["last_refresh"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return doc


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON (line {exc.lineno}); codex-portal will not overwrite it: "
            "fix it or remove it"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to read; fix it or remove it") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} is not a JSON object; codex-portal will not overwrite it: fix it or remove it"
        )
    return data


def _credentials(path: Path, data: dict[str, Any]) -> Credentials | None:
    tokens = data.get("tokens")
    key = data.get("OPENAI_API_KEY")
    mode = data.get("auth_mode")
    if isinstance(tokens, dict) and isinstance(tokens.get("access_token"), str) and mode != "apikey":
        return _oauth(tokens)
    if isinstance(key, str) and key:
        try:
            return Credentials(method="api_key", api_key=validate_api_key(key))
        except PortalError as exc:
            raise ConfigError(f"{path}: OPENAI_API_KEY cannot be used ({exc.message})") from None
    return None


def _oauth(tokens: dict[str, Any]) -> Credentials:
    """Issuer and client from the ID token (`iss`, `aud`), expiry from the access token's `exp`."""
    id_token = _text(tokens.get("id_token"))
    claims = unverified_claims(id_token)
    aud = claims.get("aud")
    client_id = aud if isinstance(aud, str) else aud[0] if isinstance(aud, list) and aud else None
    issuer = claims.get("iss")
    return Credentials.oauth(
        access_token=tokens["access_token"],
        refresh_token=_text(tokens.get("refresh_token")),
        expires_at=_expiry(unverified_claims(tokens["access_token"]).get("exp")),
        id_token=id_token,
        issuer=issuer if isinstance(issuer, str) and issuer else DEFAULT_ISSUER,
        client_id=client_id if isinstance(client_id, str) else DEFAULT_CLIENT_ID,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _expiry(exp: object) -> int | None:
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return int(exp) if 0 < exp < MAX_EXPIRES_AT else None
