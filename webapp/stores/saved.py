"""The accounts that are not active: `$CODEX_HOME/codex-portal-accounts.json` (SPEC section 8).

    {"active": "alice@example.test",
     "saved": [{"name": "work", "credentials": {"method": "oauth", "access_token": ..., ...}}]}

The active account's credentials are in `[auth]` and auth.json; this file names it, and keeps the
others. Written like the other stores: under a lock (the caller holds config.toml.lock, which every
write of the portal takes first), atomically, 0600. A file that does not parse is never overwritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from webapp.credentials import Credentials
from webapp.errors import ConfigError
from webapp.files import ParsedFile, read_text, reason, write_atomic

FILE_NAME = "codex-portal-accounts.json"
_FIELDS = tuple(f.name for f in fields(Credentials))


@dataclass(frozen=True)
class SavedAccount:
    name: str
    credentials: Credentials


@dataclass(frozen=True)
class AccountsFile:
    active: str | None  # the name of the account in [auth] and auth.json
    saved: tuple[SavedAccount, ...]


EMPTY = AccountsFile(active=None, saved=())


class SavedAccounts:
    def __init__(self, codex_home: Path) -> None:
        self.path = Path(codex_home) / FILE_NAME
        self._file: ParsedFile[AccountsFile] = ParsedFile(self.path, self._parse, EMPTY)

    def load(self) -> AccountsFile:
        return self._file.get()

    def read(self) -> AccountsFile:
        seen, text = read_text(self.path)
        return EMPTY if seen is None else self._parse(text)

    def write(self, accounts: AccountsFile) -> None:
        """The caller holds config.toml.lock. No file is left behind for no accounts."""
        try:
            if not accounts.saved and accounts.active is None:
                if self.path.exists():
                    os.unlink(self.path)
                return
            write_atomic(self.path, json.dumps(_document(accounts), indent=2))
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {reason(exc)}") from None

    def _parse(self, text: str) -> AccountsFile:
        refusal = ConfigError(
            f"{self.path} is damaged; codex-portal will not overwrite it: fix it or remove it "
            "(the saved accounts in it are then forgotten)"
        )
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise refusal from None
        if not isinstance(data, dict) or not isinstance(data.get("saved", []), list):
            raise refusal
        active = data.get("active")
        saved = []
        for entry in data.get("saved", []):
            values = entry.get("credentials") if isinstance(entry, dict) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name or not isinstance(values, dict):
                raise refusal
            try:
                creds = Credentials(**{k: v for k, v in values.items() if k in _FIELDS})
            except TypeError:
                raise refusal from None
            if creds.method not in ("oauth", "api_key") or not (creds.access_token or creds.api_key):
                raise refusal
            saved.append(SavedAccount(name, creds))
        return AccountsFile(active=active if isinstance(active, str) and active else None, saved=tuple(saved))


def _values(creds: Credentials) -> dict[str, Any]:
    return {key: value for key, value in asdict(creds).items() if value is not None}


def _document(accounts: AccountsFile) -> dict[str, Any]:
    return {
        "active": accounts.active,
        "saved": [
            {
                "name": account.name,
                "credentials": {k: v for k, v in asdict(account.credentials).items() if v is not None},
            }
            for account in accounts.saved
        ],
    }


def unique_name(name: str, taken: list[str]) -> str:
    """`name`, or `name (2)`, `name (3)`... when another account has it."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} ({n})"
    return candidate
