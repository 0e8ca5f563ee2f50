"""`codex-portal login` where the browser is on another machine (SSH, a container, WSL).

The provider sends the browser back to http://localhost:PORT/auth/callback, which the person's own
machine cannot reach. Two ways out, offered together:

- **Paste-back**: the page the browser ended on does not load, but its address carries the code and
  the state. Pasted on standard input, it ends the sign-in exactly as the callback would (the same
  `finish_login`: the state must name a pending sign-in, used once; the code goes to the token
  endpoint with its PKCE verifier). A pasted `error=` with this sign-in's state ends it with that
  error; anything else (another state, a used one, garbage, an empty line) gets one line on stderr
  and the prompt again. Nothing pasted is ever printed back.
- **ssh -L**: over SSH (`SSH_CONNECTION` set) the line that forwards the port from the person's
  machine, so that the browser's redirect reaches this one.

End of input (Ctrl-D): on a terminal it ends the sign-in ("cancelled"); from a pipe or a file it
only stops the reading, and the callback can still arrive.

Standard input is read without blocking the event loop (`add_reader`, or a thread where the loop
cannot watch it, e.g. a regular file), a line at most MAX_LINE bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO
from urllib.parse import urlsplit

from starlette.datastructures import QueryParams

from webapp.credentials import Credentials
from webapp.errors import PortalError
from webapp.portal import Portal

MAX_LINE = 16 * 1024
PROMPT = "Paste the address here: "
TOO_LONG = object()  # a line longer than MAX_LINE
CANCELLED = "sign-in cancelled (end of input at the prompt); nothing was changed"


def help_lines(port: int, environ: Mapping[str, str]) -> list[str]:
    """What `login` prints after the link: how to finish when the browser is elsewhere."""
    callback = f"http://localhost:{port}/auth/callback"
    lines = []
    ssh = ssh_command(port, environ)
    if ssh:
        lines += [
            "Over SSH, forward the port first: on your own machine, run",
            f"  {ssh}",
            "(with the address you use to reach this machine), then open the link there.",
        ]
    lines += [
        f"Waiting for the browser to come back to {callback}.",
        "Browser on another machine? The page it ends on will not load: copy its whole address",
        f"({callback}?code=...) from the address bar, paste it here and press Enter.",
    ]
    return lines


def ssh_command(port: int, environ: Mapping[str, str]) -> str | None:
    """`ssh -L PORT:localhost:PORT user@host` for an SSH session, else None. The user is this
    session's; the host is the address the SSH client reached (from SSH_CONNECTION), which may
    differ from the name the person types."""
    words = environ.get("SSH_CONNECTION", "").split()
    if len(words) != 4:
        return None
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "you"
    server, server_port = words[2], words[3]
    host = server if all(ch.isalnum() or ch in ".:-%" for ch in server) else "this-machine"
    extra = f" -p {server_port}" if server_port.isdigit() and server_port != "22" else ""
    return f"ssh -L {port}:localhost:{port}{extra} {user}@{host}"


def parse_paste(line: str, port: int) -> QueryParams | str:
    """The callback parameters of a pasted address, or the one line that says what is wrong
    (which never repeats what was pasted: it may hold a code)."""
    text = line.strip()
    callback = f"http://localhost:{port}/auth/callback"
    if not text:
        return f"Nothing was pasted. Paste the whole address the browser ended on ({callback}?...)."
    if "://" in text:
        parts = urlsplit(text)
        if parts.path.rstrip("/") != "/auth/callback" or not parts.query:
            return (
                "That is not the address the browser ended on: it starts with "
                f"{callback}? (not the sign-in link itself). Paste that one."
            )
        query = parts.query
    elif text.startswith("?") or "state=" in text:
        query = text.removeprefix("?")
    else:
        return f"That is not an address. Paste the whole address the browser ended on ({callback}?...)."
    params = QueryParams(query)
    if not params.get("state"):
        return "That address has no state: copy the whole address from the browser's address bar."
    return params


class StdinLines:
    """Lines of a file (standard input) as an asyncio queue; None at end of input."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdin
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[str | object | None] = asyncio.Queue()
        self._buffer = b""
        self._skipping = False  # inside a line already reported as too long
        self._fd = self._stream.fileno()
        self._watched = False
        try:
            self._loop.add_reader(self._fd, self._readable)
            self._watched = True
        except (OSError, NotImplementedError, ValueError):  # a regular file, or no selector loop
            threading.Thread(target=self._read_in_thread, name="stdin-lines", daemon=True).start()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except OSError:
            data = b""
        if not data:
            self._emit_rest()
            self.queue.put_nowait(None)
            self.close()
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._emit(line)
        if len(self._buffer) > MAX_LINE:
            self.queue.put_nowait(TOO_LONG)
            self._buffer = b""  # the rest of that line is dropped too
            self._skipping = True

    def _emit(self, line: bytes) -> None:
        if self._skipping:  # the end of a line already reported as too long
            self._skipping = False
            return
        self.queue.put_nowait(TOO_LONG if len(line) > MAX_LINE else line.decode("utf-8", "replace"))

    def _emit_rest(self) -> None:
        if self._buffer:
            self._emit(self._buffer)
            self._buffer = b""

    def _read_in_thread(self) -> None:
        binary = getattr(self._stream, "buffer", None)
        while True:
            try:
                raw = binary.readline(MAX_LINE + 1) if binary is not None else b""
            except (OSError, ValueError):
                raw = b""
            if not raw:
                self._put(None)
                return
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                self._put(TOO_LONG)
                while raw and not raw.endswith(b"\n"):  # drop the rest of that line
                    try:
                        raw = binary.readline(MAX_LINE + 1) if binary is not None else b""
                    except (OSError, ValueError):
                        raw = b""
                continue
            self._put(raw.rstrip(b"\n").decode("utf-8", "replace"))

    def _put(self, item: str | object | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def close(self) -> None:
        if self._watched:
            self._watched = False
            self._loop.remove_reader(self._fd)


async def read_pastes(
    portal: Portal,
    port: int,
    *,
    finished: Callable[[], bool],
    on_login: Callable[[Credentials | None, str], None],
    on_cancel: Callable[[PortalError], None],
    stream: IO[str] | None = None,
) -> None:
    """Read pasted addresses until one ends the sign-in (or the callback did, or input ended)."""
    from webapp.views import finish_login

    source = stream or sys.stdin
    if source is None or source.closed:
        return
    interactive = source.isatty()
    lines = StdinLines(source)
    prompting = False
    try:
        while not finished():
            if interactive:
                print(PROMPT, end="", file=sys.stderr, flush=True)
                prompting = True
            line = await lines.queue.get()
            prompting = False
            if finished():
                return
            if line is None:  # end of input
                if interactive:
                    print(file=sys.stderr)
                    on_cancel(PortalError(CANCELLED))
                return
            if line is TOO_LONG or not isinstance(line, str):
                print("That line is too long to be the address the browser ended on.", file=sys.stderr)
                continue
            params = parse_paste(line, port)
            if isinstance(params, str):
                print(params, file=sys.stderr, flush=True)
                continue
            result = await finish_login(portal, params)
            if result is None:
                print(
                    "That address is not from a sign-in waiting here (another sign-in's, already "
                    "used, or expired): nothing was changed. Paste the one from this sign-in.",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            on_login(*result)
            return
    finally:
        lines.close()
        if prompting:  # the callback came while the prompt waited: what follows gets its own line
            print(file=sys.stderr, flush=True)
