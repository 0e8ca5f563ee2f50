"""The two stores kept in step: `[auth]` of config.toml (ours) and auth.json (the Codex CLI's).

Every change goes to both, under both locks (config.toml.lock, then auth.lock). A change either
tool made shows in the other: the newest change wins. To tell "the Codex CLI changed auth.json"
from "not synced yet", we remember a fingerprint of what we last wrote to each store (a hash,
never a secret) in `codex-portal-sync.json`. Without that record a store holding a login wins over
an empty one, and auth.json wins a tie (the person used `codex login` before).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from webapp.credentials import Credentials, default_name, fingerprint, same_account
from webapp.errors import ConfigError
from webapp.files import ParsedFile, write_atomic
from webapp.stores.auth_json import AuthJsonStore, can_hold
from webapp.stores.config_toml import ConfigTomlStore
from webapp.stores.saved import AccountsFile, SavedAccount, SavedAccounts, unique_name

CodexMode = Literal["file", "keyring", "auto", "ephemeral", "off"]
RECORD_NAME = "codex-portal-sync.json"
Which = Literal["config.toml", "auth.json"]


@dataclass(frozen=True)
class CodexView:
    """What the Codex CLI sees, beside what the portal shows (SPEC section 7, `codex_cli`)."""

    store: CodexMode
    path: Path | None
    signed_in: bool
    in_sync: bool
    newer: Which | None = None  # when the two differ: which store holds the newer change
    problem: str | None = None  # why they could not be brought in step

    def summary(self, *, with_path: bool = True) -> str:
        """One sentence for `status` (and, without the path, for the page, which shows it apart)."""
        if self.store == "off":
            return "not kept in step: auth.json is left alone (--no-codex-sync or CODEX_PORTAL_CODEX_SYNC=0)."
        if self.store != "file":
            where = "in memory only" if self.store == "ephemeral" else "in the OS keyring"
            return (
                f'keeps its login {where} (cli_auth_credentials_store = "{self.store}"), '
                "which codex-portal does not reach."
            )
        if self.problem:
            return self.problem
        where = f" in {self.path}" if with_path else ""
        if self.in_sync:
            return f"sees this same login{where}." if self.signed_in else f"not signed in either{where}."
        newer = "the Codex CLI's auth.json" if self.newer == "auth.json" else "config.toml"
        return f"sees another login{where}; {newer} holds the newer change."

    def report(self) -> dict[str, object]:
        return {
            "store": self.store,
            "path": str(self.path) if self.path else None,
            "signed_in": self.signed_in,
            "in_sync": self.in_sync,
        }


class Stores:
    def __init__(self, config: ConfigTomlStore, codex: AuthJsonStore | None) -> None:
        self.config = config
        self.codex = codex  # None: --no-codex-sync
        self.saved = SavedAccounts(config.path.parent)
        self.record_path = config.path.parent / RECORD_NAME
        self._record: ParsedFile[dict[str, Any]] = ParsedFile(self.record_path, _parse_record, {})

    @property
    def path(self) -> Path:
        return self.config.path

    def codex_mode(self) -> CodexMode:
        if self.codex is None:
            return "off"
        setting = self.config.codex_store_setting()
        if setting is None or setting == "file":
            return "file"
        return setting if setting in ("keyring", "auto", "ephemeral") else "off"

    def load(self) -> Credentials | None:
        """The newest login; stores found apart are brought in step when the home can be written."""
        return self.view()[0]

    def view(self, *, sync: bool = True) -> tuple[Credentials | None, CodexView]:
        """The newest login and what the Codex CLI sees. `sync=False` never locks or writes: the
        stores found apart say so (`CodexView.newer`), for a caller that syncs off its event loop."""
        ours = self.config.load()
        mode = self.codex_mode()
        if mode != "file" or self.codex is None:
            return ours, CodexView(store=mode, path=None, signed_in=False, in_sync=False)
        try:
            theirs = self.codex.load()
        except ConfigError as exc:
            return ours, self._codex_view(ours, None, problem=exc.message)
        if fingerprint(ours) == fingerprint(theirs) or self._as_left(ours, theirs):
            return ours, self._codex_view(ours, theirs)
        newest, which = self._newest(ours, theirs)
        if sync and os.access(self.config.path.parent, os.W_OK):
            try:
                with self.transaction() as tx:
                    return tx.credentials, tx.codex_view
            except ConfigError:
                pass  # the locks cannot be had (a read-only lock file): show, do not write
        return newest, self._codex_view(ours, theirs, newer=which)

    @contextmanager
    def transaction(self) -> Iterator[SyncedTransaction]:
        """Both locks, config.toml.lock first; the stores read fresh and brought in step."""
        with ExitStack() as stack:
            stack.enter_context(self.config.lock())
            codex = self.codex if self.codex_mode() == "file" else None
            if codex is not None:
                stack.enter_context(codex.lock())
            tx = SyncedTransaction(self, codex)
            yield tx
            tx.commit()

    def _codex_view(
        self,
        ours: Credentials | None,
        theirs: Credentials | None,
        *,
        newer: Which | None = None,
        problem: str | None = None,
    ) -> CodexView:
        assert self.codex is not None
        in_sync = problem is None and fingerprint(ours) == fingerprint(theirs)
        if problem is None and not in_sync and ours is not None and not can_hold(ours):
            problem = "the Codex CLI cannot use this sign-in: the provider issued no ID token"
        return CodexView(
            store="file",
            path=self.codex.path,
            signed_in=theirs is not None,
            in_sync=in_sync,
            newer=None if in_sync else newer,
            problem=problem,
        )

    def _as_left(self, ours: Credentials | None, theirs: Credentials | None) -> bool:
        """Both stores hold what we last wrote to them (they were left apart on purpose)."""
        record = self._record.get()
        return record.get("config.toml") == fingerprint(ours) and record.get("auth.json") == fingerprint(
            theirs
        )

    def _newest(
        self, ours: Credentials | None, theirs: Credentials | None
    ) -> tuple[Credentials | None, Which]:
        record = self._record_now()
        if not record:
            return (ours, "config.toml") if theirs is None and ours is not None else (theirs, "auth.json")
        ours_changed = record.get("config.toml") != fingerprint(ours)
        theirs_changed = record.get("auth.json") != fingerprint(theirs)
        if theirs_changed and not ours_changed:
            return theirs, "auth.json"
        if ours_changed and not theirs_changed:
            return ours, "config.toml"
        assert self.codex is not None
        if _mtime(self.codex.path) > _mtime(self.config.path):
            return theirs, "auth.json"
        return ours, "config.toml"

    def _record_now(self) -> dict[str, str]:
        try:
            return self._record.get()
        except ConfigError:
            return {}

    def remember(self, ours: Credentials | None, theirs: Credentials | None) -> None:
        """What we left in each store (the caller holds both locks)."""
        record = {"config.toml": fingerprint(ours), "auth.json": fingerprint(theirs)}
        if self._record_now() != record:
            write_atomic(self.record_path, json.dumps(record))


class SyncedTransaction:
    """Both stores read fresh under their locks, brought in step, then changed together by `save`."""

    def __init__(self, stores: Stores, codex: AuthJsonStore | None) -> None:
        self._stores = stores
        self._codex = codex
        ours = stores.config.read()
        self.credentials = ours
        self._problem: str | None = None
        theirs: Credentials | None = None
        if codex is not None:
            try:
                theirs = codex.read()
            except ConfigError as exc:
                self._problem = exc.message  # never overwritten; config.toml goes on alone
                self._codex = None
        self._theirs = theirs
        self._catch_up: tuple[Credentials | None, Which] | None = None
        self._accounts: AccountsFile | None = None
        if self._codex is not None and not stores._as_left(ours, theirs):
            newest, which = stores._newest(ours, theirs)
            self.credentials = newest
            self._catch_up = (newest, which)

    @property
    def accounts(self) -> AccountsFile:
        """The saved accounts, read fresh under the lock on first use (a damaged file: ConfigError)."""
        if self._accounts is None:
            self._accounts = self._stores.saved.read()
        return self._accounts

    def save_accounts(self, accounts: AccountsFile) -> None:
        self._stores.saved.write(accounts)
        self._accounts = accounts

    def _follow_codex(self, ours: Credentials, theirs: Credentials | None) -> None:
        """The Codex CLI signed in to another account (the one that was active is kept as a saved
        account), or signed out (the active login ends; the saved ones stay)."""
        try:
            accounts = self.accounts
        except ConfigError:
            return  # a damaged accounts file is left as it is; the login itself still follows
        saved = list(accounts.saved)
        active = None
        if theirs is not None:
            saved = [a for a in saved if not same_account(a.credentials, theirs)]  # a stale copy
            saved.append(SavedAccount(accounts.active or default_name(ours), ours))
            active = unique_name(default_name(theirs), [a.name for a in saved])
        self.save_accounts(AccountsFile(active=active, saved=tuple(saved)))

    def commit(self) -> None:
        """At the end of a transaction that raised nothing: stores found apart and not saved to
        since are brought in step, only the one that is behind written. A failed change (a file
        that cannot be written) so leaves both files as they were."""
        if self._catch_up is None or self._codex is None:
            return
        newest, which = self._catch_up
        self._catch_up = None
        stores = self._stores
        ours, theirs = stores.config.read(), self._theirs
        if fingerprint(ours) != fingerprint(theirs):
            if which == "auth.json":
                stores.config.write(newest)
                if ours is not None and (newest is None or not same_account(ours, newest)):
                    self._follow_codex(ours, newest)
                ours = newest
            else:
                theirs = newest if newest is None or can_hold(newest) else None
                self._codex.write(theirs)
                self._theirs = theirs
        stores.remember(ours, theirs)  # in step already or now: later changes are told apart

    @property
    def codex_view(self) -> CodexView:
        if self._stores.codex is None or self._stores.codex_mode() != "file":
            return CodexView(store=self._stores.codex_mode(), path=None, signed_in=False, in_sync=False)
        return self._stores._codex_view(self.credentials, self._theirs, problem=self._problem)

    def save(self, creds: Credentials | None) -> None:
        stores = self._stores
        self._catch_up = None
        stores.config.write(creds)
        self.credentials = creds
        if self._codex is None:
            return
        theirs = creds if creds is None or can_hold(creds) else None
        self._codex.write(theirs)
        self._theirs = theirs
        stores.remember(creds, theirs)


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _parse_record(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
