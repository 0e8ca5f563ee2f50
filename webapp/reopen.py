"""Getting back into a running portal: a new one-time link, for whoever can read CODEX_HOME.

A serving portal records where it listens and a random secret in
$CODEX_HOME/codex-portal-serve.json (0600, in the 0700 CODEX_HOME; removed when it stops).
`codex-portal` (or `serve`, or `open`) run again with the same CODEX_HOME reads it and asks the
running portal for a new launch token: POST /api/link with the secret in the X-Codex-Portal-Secret
header, compared in constant time; no browser session is needed, and none is given. So a lost tab
costs one command, and only the person gets a link:

- another local user cannot read the file (and the portal refuses their connections anyway);
- a caller with another CODEX_HOME finds no file there, so it gets no link;
- before the secret is sent, the caller checks (Linux) that the socket it reached belongs to its
  own uid: a stale file must not hand the secret to whoever took the port since;
- where CODEX_HOME cannot be written there is no file, and the portal (at start) and a second
  caller both say that a new link then needs a restart.

Standard library only: `codex-portal` runs this before it imports the web stack.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webapp.settings import Settings

RECORD_NAME = "codex-portal-serve.json"
LINK_PATH = "/api/link"
LINK_HEADER = "X-Codex-Portal-Secret"
MAX_RECORD = 4096
ASK_TIMEOUT = 5.0  # seconds for the running portal to answer
PEER_WAIT = 2.0  # seconds for the running portal to accept the connection (its socket's owner shows then)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


@dataclass(frozen=True)
class Record:
    port: int
    host: str
    pid: int
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Lookup:
    """A new link to the running portal, or why there is none (a sentence without a secret)."""

    url: str | None
    port: int | None = None
    why: str = ""
    answering: bool = False  # a portal answered, and gave no link (starting another will not help)


def record_path(codex_home: Path) -> Path:
    return codex_home / RECORD_NAME


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def connect_host(bind_host: str) -> str:
    """Where a caller on this machine reaches a portal listening on `bind_host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


# ---- the running portal's side -------------------------------------------------------------
def publish(settings: Settings, secret: str) -> Callable[[], None] | None:
    """Record this portal (port, address, pid, secret) in CODEX_HOME; the function that removes
    the record, or None when CODEX_HOME cannot be written (a note on stderr says what that costs)."""
    from webapp.errors import PortalError
    from webapp.files import reason, write_atomic

    path = record_path(settings.codex_home)
    record = {
        "port": settings.port,
        "host": connect_host(settings.bind_hosts[0]),
        "pid": os.getpid(),
        "secret": secret,
    }
    try:
        write_atomic(path, json.dumps(record) + "\n")
    except (OSError, PortalError) as exc:
        why = exc.message if isinstance(exc, PortalError) else f"cannot write {path}: {reason(exc)}"
        print(
            f"Note: {why}. A lost link then needs a restart of codex-portal: a second "
            "`codex-portal` finds a running one through that file.",
            file=sys.stderr,
            flush=True,
        )
        return None

    def withdraw() -> None:
        """Remove the record if it is still this portal's (a later portal may have replaced it)."""
        try:
            current = _read(path)
        except (OSError, ValueError):
            return
        if current is not None and current.secret == secret:
            try:
                path.unlink()
            except OSError:
                pass

    return withdraw


# ---- the caller's side ---------------------------------------------------------------------
def _read(path: Path) -> Record | None:
    """The record, None when there is none; OSError when it cannot be read, ValueError when it is
    not one of ours (another owner, readable by others, damaged)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ValueError("it is not a private file of yours")
        data = os.read(fd, MAX_RECORD + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
        record = Record(port=doc["port"], host=doc["host"], pid=doc["pid"], secret=doc["secret"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("it is damaged") from None
    if (
        not isinstance(record.port, int)
        or not 0 < record.port < 65536
        or not isinstance(record.host, str)
        or not isinstance(record.pid, int)
        or not isinstance(record.secret, str)
        or not record.secret
    ):
        raise ValueError("it is damaged")
    return record


def find_link(settings: Settings) -> Lookup:
    """A new one-time link to the portal serving `settings`' CODEX_HOME, or why there is none."""
    home = settings.codex_home
    path = record_path(home)
    try:
        record = _read(path)
    except OSError as exc:
        from webapp.files import reason

        return Lookup(None, why=f"cannot read {path} ({reason(exc)}): only its owner gets a new link")
    except ValueError as exc:
        return Lookup(None, why=f"{path} was ignored: {exc}")
    if record is None:
        return Lookup(None, why=f"no codex-portal is serving {home}{unwritable_note(home)}")
    return _ask(record, path)


def unwritable_note(home: Path) -> str:
    """Why a portal serving `home` may exist and still have left no record there."""
    if home.is_dir() and not os.access(home, os.W_OK):
        return (
            f" that can give a new link: {home} cannot be written, so a portal serving it could not "
            "record itself there, and a new link needs a restart of that portal"
        )
    return ""


def _ask(record: Record, path: Path) -> Lookup:
    port = record.port
    connection = http.client.HTTPConnection(record.host, port, timeout=ASK_TIMEOUT)
    try:
        try:
            connection.connect()
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH):
                _forget_if_gone(record, path)
                return Lookup(None, port, f"the codex-portal recorded in {path} is no longer running")
            why = f"the codex-portal on port {port} could not be reached ({exc.strerror or exc})"
            return Lookup(None, port, why, answering=True)
        assert connection.sock is not None
        problem = _not_ours(connection.sock, port)
        if problem:
            return Lookup(None, port, problem)
        connection.request(
            "POST",
            LINK_PATH,
            body=b"",
            headers={"Host": f"localhost:{port}", LINK_HEADER: record.secret, "Connection": "close"},
        )
        response = connection.getresponse()
        body = response.read(MAX_RECORD)
    except (OSError, http.client.HTTPException) as exc:
        why = f"the codex-portal on port {port} did not answer ({type(exc).__name__})"
        return Lookup(None, port, why, answering=True)
    finally:
        connection.close()
    if response.status == 403:
        return Lookup(
            None,
            port,
            f"the program on port {port} refused the secret recorded in {path}: restart codex-portal "
            "for a new link",
            answering=True,
        )
    try:
        token = json.loads(body)["token"]
    except (ValueError, KeyError, TypeError):
        token = None
    if response.status != 200 or not isinstance(token, str) or not _TOKEN.fullmatch(token):
        why = f"the program on port {port} gave no link (HTTP {response.status})"
        return Lookup(None, port, why, answering=True)
    return Lookup(f"http://localhost:{port}/?token={token}", port)


def _not_ours(sock: object, port: int) -> str:
    """Why the socket at the other end must not get the secret: '' when it is this user's."""
    import socket as socket_module

    from webapp import peers

    assert isinstance(sock, socket_module.socket)
    if not peers.available():
        return ""  # another OS: the file's privacy is the guard
    deadline = time.monotonic() + PEER_WAIT
    while True:
        # Known once the portal has accepted the connection (a queued one has no owner yet).
        uid = peers.peer_uid(sock.getsockname(), sock.getpeername())
        if uid is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if uid == os.geteuid():
        return ""
    if uid is None:
        return f"the program on port {port} did not accept the connection: nothing was sent to it"
    return (
        f"port {port} is held by a program of another user (uid {uid}), not by your codex-portal: "
        "nothing was sent to it"
    )


def _forget_if_gone(record: Record, path: Path) -> None:
    """A record whose process is gone (killed before it could remove it) is removed."""
    try:
        os.kill(record.pid, 0)
        return  # alive (perhaps not listening yet): leave it
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    try:
        current = _read(path)
        if current is not None and current.secret == record.secret:
            path.unlink()
    except (OSError, ValueError):
        pass


def announce(settings: Settings, lookup: Lookup) -> int:
    """Print (and open, unless --no-browser) the new link; exit code 0."""
    assert lookup.url is not None
    print(lookup.url, flush=True)
    print(
        f"codex-portal is already serving {settings.config_path} on port {lookup.port}; "
        "the link above is a new one-time link to it.",
        file=sys.stderr,
        flush=True,
    )
    if settings.open_browser:
        from webapp.server import NO_BROWSER, open_in_browser

        if not open_in_browser(lookup.url):
            print(NO_BROWSER, file=sys.stderr, flush=True)
    return 0
