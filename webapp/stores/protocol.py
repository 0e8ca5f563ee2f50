"""What a credential store is: a place one login lives, read freely, changed under its own lock.

A backend (config_toml.py, auth_json.py; an OS keyring would be a third) implements `Store`:

    load()         the login now, without locking or writing (may be cached on the file's identity)
    lock()         its exclusive lock, the one other tools take for the same place
    read()         the login, read fresh (the caller holds lock())
    write(creds)   replace the login atomically, None removing it (the caller holds lock())
    transaction()  lock(), then a `Transaction`: read, change, write
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from webapp.credentials import Credentials
from webapp.files import locked


class Store(Protocol):
    name: str  # what a person calls it: "config.toml", "auth.json"
    path: Path

    def load(self) -> Credentials | None: ...

    def lock(self) -> AbstractContextManager[None]: ...

    def read(self) -> Credentials | None: ...

    def write(self, creds: Credentials | None) -> None: ...

    def transaction(self) -> AbstractContextManager[Transaction]: ...


class ReadWrite(Protocol):
    def read(self) -> Credentials | None: ...

    def write(self, creds: Credentials | None) -> None: ...


class Transaction:
    """The login read fresh under the store's lock; `save` writes at once."""

    def __init__(self, store: ReadWrite) -> None:
        self._store = store
        self.credentials = store.read()

    def save(self, creds: Credentials | None) -> None:
        self._store.write(creds)
        self.credentials = creds


class LockedFile:
    """What the file backends share: an exclusive flock on a sidecar lock file, and transactions.
    A subclass sets `path`, `lock_path`, `lock_timeout` and implements `read` and `write`."""

    path: Path
    lock_path: Path
    lock_timeout: float

    def read(self) -> Credentials | None:
        raise NotImplementedError

    def write(self, creds: Credentials | None) -> None:
        raise NotImplementedError

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The sidecar lock (flock, which other tools can take too)."""
        with locked(self.lock_path, timeout=self.lock_timeout, what=self.path):
            yield

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.lock():
            yield Transaction(self)
