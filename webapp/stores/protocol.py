"""What a credential store is: a place one login lives, read freely, changed under its own lock.

A backend (config_toml.py, auth_json.py; an OS keyring would be a third) implements `Store`:

    load()         the login now, without locking or writing (may be cached on the file's identity)
    lock()         its exclusive lock, the one other tools take for the same place
    read()         the login, read fresh (the caller holds lock())
    write(creds)   replace the login atomically, None removing it (the caller holds lock())
    transaction()  lock(), then a `Transaction`: read, change, write
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from webapp.credentials import Credentials


class Store(Protocol):
    name: str  # what a person calls it: "config.toml", "auth.json"
    path: Path

    def load(self) -> Credentials | None: ...

    def lock(self) -> AbstractContextManager[None]: ...

    def read(self) -> Credentials | None: ...

    def write(self, creds: Credentials | None) -> None: ...

    def transaction(self) -> AbstractContextManager[Transaction]: ...


class Transaction:
    """The login read fresh under the store's lock; `save` writes at once."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.credentials = store.read()

    def save(self, creds: Credentials | None) -> None:
        self._store.write(creds)
        self.credentials = creds
