"""Paste-back: `codex-portal login` with the browser on another machine (issue 11, item 1).

The provider sends the browser back to http://localhost:PORT/auth/callback, which a browser on
another machine cannot reach. The person copies the address it ended on and pastes it in the
terminal: checked like the callback (state of a pending sign-in, one use, PKCE, the same code
exchange). End to end in Chromium on the real provider's pages, where `localhost` leads nowhere:
Playwright's routes cannot stop a redirect (they see only the first request of a navigation), so
this browser cannot resolve `localhost` at all (its host-resolver rules), and a route refuses any
direct request to the CLI's port as well. Then the bad pastes (another state, a used one, garbage,
an empty line, the sign-in link itself, an overlong line), `error=`, Ctrl-D on a pipe (the callback
can still come) and on a terminal (the sign-in ends), and the `ssh -L` line over SSH.
"""

from __future__ import annotations

import os
import pty
import queue
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from playwright.sync_api import Browser, Playwright, expect

from tests.browser import launch_chromium
from tests.conftest import free_port
from tests.idp import TestProvider
from tests.support import read_until
from webapp.paste import PROMPT, parse_paste, ssh_command

# localhost resolves to nothing: only the provider (on 127.0.0.1) is reachable.
NO_LOCALHOST = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
NOT_FROM_HERE = (
    "That address is not from a sign-in waiting here (another sign-in's, already used, or expired): "
    "nothing was changed. Paste the one from this sign-in."
)


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch_chromium(playwright, resolver_rules=NO_LOCALHOST)
    yield chromium
    chromium.close()


class Login:
    """`python -m webapp login --no-browser --port P` in its own process, its stderr read by a thread."""

    def __init__(self, idp: TestProvider, home: Path, **env: str) -> None:
        self.port = free_port()
        self.home = home
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "SSH_", "BROWSER"))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webapp", "login", "--no-browser", "--port", str(self.port)],
            env={
                **base,
                "CODEX_HOME": str(home),
                "CODEX_PORTAL_ISSUER": idp.issuer,
                "CODEX_PORTAL_CLIENT_ID": idp.client_id,
                **env,
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.proc.stdout is not None
        self.authorize = self.proc.stdout.readline().strip()
        assert self.authorize.startswith(f"{idp.issuer}/auth?"), self.authorize
        self.state = parse_qs(urlsplit(self.authorize).query)["state"][0]
        self.callback = f"http://localhost:{self.port}/auth/callback"
        self.help = self.until("and press Enter.")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, ending: str, timeout: float = 20) -> list[str]:
        """The stderr lines up to the one that ends with `ending`."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, f"stderr closed before {ending!r}: {got}"
            got.append(line)
            if line.endswith(ending):
                return got

    def paste(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def next_line(self, timeout: float = 20) -> str | None:
        return self.lines.get(timeout=timeout)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        rest = self.proc.stdout.read()
        assert rest == "", rest  # only the link goes to standard output
        while self.lines.get(timeout=5) is not None:
            pass
        return code, "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # (stdin: what was written could not all reach a process that had exited)


def _auth(home: Path) -> dict[str, object]:
    return dict(tomllib.loads((home / "config.toml").read_text())["auth"])


def _with_state(address: str, state: str) -> str:
    parts = urlsplit(address)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return parts._replace(query=urlencode({**query, "state": state})).geturl()


# ---- end to end in Chromium ------------------------------------------------------------------------
def test_the_address_chromium_ended_on_pasted_in_the_terminal_signs_in(
    browser: Browser, idp: TestProvider, tmp_path: Path
) -> None:
    login = Login(idp, tmp_path / "codex")
    context = browser.new_context()
    direct: list[str] = []

    def refuse(route: object) -> None:  # a request straight to the CLI's port: refused too
        direct.append(route.request.url)  # type: ignore[attr-defined]
        route.abort()  # type: ignore[attr-defined]

    context.route(f"http://localhost:{login.port}/**", refuse)
    page = context.new_page()
    try:
        assert login.help == [
            "To sign in, open this link in your browser:",
            f"Waiting for the browser to come back to {login.callback}.",
            "Browser on another machine? The page it ends on will not load: copy its whole address",
            f"({login.callback}?code=...) from the address bar, paste it here and press Enter.",
        ]
        page.goto(login.authorize)
        page.locator('input[name="login"]').fill("alice")
        page.locator('input[name="password"]').fill("any password")
        page.get_by_role("button", name="Sign-in", exact=True).click()
        expect(page.get_by_role("heading", name="Authorize")).to_be_visible()
        with page.expect_event("requestfailed", lambda r: r.url.startswith(login.callback)) as failed:
            page.get_by_role("button", name="Continue", exact=True).click()
        ended_on = failed.value.url  # what the address bar shows: the page that would not load
        assert failed.value.failure == "net::ERR_NAME_NOT_RESOLVED"
        query = parse_qs(urlsplit(ended_on).query)
        assert query["state"] == [login.state] and query["code"]
        time.sleep(0.2)
        assert login.proc.poll() is None and not (tmp_path / "codex" / "config.toml").exists()

        # Bad pastes: one line each, and the sign-in goes on.
        bad = [
            ("garbage, not an address", "That is not an address."),
            ("", "Nothing was pasted."),
            (_with_state(ended_on, "another-state-" + "x" * 30), NOT_FROM_HERE),
            (login.authorize, "That is not the address the browser ended on"),
            (f"{login.callback}?code=abc", "That address has no state"),
            ("x" * 20_000, "That line is too long"),
        ]
        for text, said in bad:
            login.paste(text)
            line = login.next_line()
            assert line is not None and line.startswith(said), (text[:40], line)
        assert login.proc.poll() is None

        login.paste(ended_on)
        code, err = login.finish()
    finally:
        context.close()
        login.kill()
    assert code == 0, err
    assert err.splitlines()[-1] == (
        f"Signed in as alice@example.test. Saved to {tmp_path / 'codex' / 'config.toml'} "
        f"and {tmp_path / 'codex' / 'auth.json'}."
    )
    auth = _auth(tmp_path / "codex")
    assert auth["issuer"] == idp.issuer and auth["access_token"] and auth["refresh_token"]
    assert query["code"][0] not in err and login.state not in err  # nothing pasted is printed back
    assert direct == []  # the browser never reached the CLI's port


# ---- the same, the provider's pages driven without a browser --------------------------------------
def test_a_used_address_is_refused_and_a_pasted_error_ends_the_sign_in(
    idp: TestProvider, tmp_path: Path
) -> None:
    first = Login(idp, tmp_path / "codex")
    try:
        used = idp.login_without_browser(first.authorize)
        first.paste(used)
        code, err = first.finish()
        assert code == 0, err
    finally:
        first.kill()
    second = Login(idp, tmp_path / "codex")
    try:
        second.paste(used)  # the first sign-in's address, already used
        assert second.next_line() == NOT_FROM_HERE
        refused = (
            f"{second.callback}?error=access_denied&error_description=End-User+aborted&state={second.state}"
        )
        second.paste(refused)
        code, err = second.finish()
    finally:
        second.kill()
    assert code == 1
    assert err.splitlines()[-1] == (
        "Error: Sign-in failed: the provider refused the sign-in (access_denied): End-User aborted; "
        "nothing was changed."
    )


def test_end_of_input_on_a_pipe_leaves_the_callback_to_come(idp: TestProvider, tmp_path: Path) -> None:
    ssh = {"SSH_CONNECTION": "203.0.113.9 50022 198.51.100.7 2222"}
    login = Login(idp, tmp_path / "codex", **ssh)
    try:
        user = ssh_command(login.port, ssh)
        assert user is not None and user.startswith(f"ssh -L {login.port}:localhost:{login.port} -p 2222 ")
        assert login.help == [
            "To sign in, open this link in your browser:",
            "Over SSH, forward the port first: on your own machine, run",
            f"  {user}",
            "(with the address you use to reach this machine), then open the link there.",
            f"Waiting for the browser to come back to {login.callback}.",
            "Browser on another machine? The page it ends on will not load: copy its whole address",
            f"({login.callback}?code=...) from the address bar, paste it here and press Enter.",
        ]
        assert user.endswith("@198.51.100.7")
        assert login.proc.stdin is not None
        login.proc.stdin.close()  # Ctrl-D: no more pasting, still waiting
        time.sleep(0.3)
        assert login.proc.poll() is None
        callback = idp.login_without_browser(login.authorize)  # (through the tunnel, say)
        assert httpx2.get(callback, follow_redirects=True, timeout=20).status_code == 200
        code, err = login.finish()
    finally:
        login.kill()
    assert code == 0, err
    assert _auth(tmp_path / "codex")["access_token"]


def test_ctrl_d_at_the_prompt_on_a_terminal_ends_the_sign_in(idp: TestProvider, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "SSH_", "BROWSER"))}
    env = {
        **base,
        "CODEX_HOME": str(tmp_path / "codex"),
        "CODEX_PORTAL_ISSUER": idp.issuer,
        "CODEX_PORTAL_CLIENT_ID": idp.client_id,
    }
    port = str(free_port())
    proc = subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--no-browser", "--port", port],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,  # the pty becomes its controlling terminal
    )
    try:
        os.close(follower)
        output = read_until(leader, PROMPT.encode())
        os.write(leader, b"not an address\n")
        again = read_until(leader, b"That is not an address.")
        if not again.split(b"That is not an address.", 1)[1].endswith(PROMPT.encode()):
            again += read_until(leader, PROMPT.encode())  # (unless it came in the same read)
        output += again
        os.write(leader, b"\x04")
        output += read_until(leader, b"")
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
    os.close(leader)
    text = output.decode()
    assert "Error: sign-in cancelled (end of input at the prompt); nothing was changed" in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "codex" / "config.toml").exists()


# ---- the parts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("http://localhost:1455/auth/callback?code=c&state=s", "s"),
        ("  http://127.0.0.1:1455/auth/callback/?state=s&code=c  ", "s"),
        ("?code=c&state=s", "s"),
        ("code=c&state=s", "s"),
    ],
)
def test_a_pasted_address_or_its_query_is_understood(text: str, state: str) -> None:
    params = parse_paste(text, 1455)
    assert not isinstance(params, str) and params["state"] == state


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello SECRET",
        "https://auth.openai.com/oauth/authorize?state=SECRET",
        "http://localhost:1455/auth/callback#SECRET",
        "http://localhost:1455/auth/callback?code=SECRET",
        "code=SECRET",
    ],
)
def test_anything_else_is_one_line_that_repeats_nothing(text: str) -> None:
    said = parse_paste(text, 1455)
    assert isinstance(said, str) and "\n" not in said
    assert "SECRET" not in said


def test_no_ssh_line_without_ssh() -> None:
    assert ssh_command(1455, {}) is None
    assert ssh_command(1455, {"SSH_CONNECTION": "garbage"}) is None
    line = ssh_command(1457, {"SSH_CONNECTION": "10.0.0.2 40000 10.0.0.1 22"})
    assert line is not None and re.fullmatch(r"ssh -L 1457:localhost:1457 \S+@10\.0\.0\.1", line)


def test_a_state_the_callback_used_is_refused_when_pasted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In one portal: the callback spent the first sign-in's state; pasting its address again is
    refused (one line), and the pasted error of the second ends that one."""
    from starlette.datastructures import QueryParams

    from webapp.app import create_app
    from webapp.paste import read_pastes
    from webapp.settings import Settings
    from webapp.views import finish_login

    settings = Settings(config_path=tmp_path / "config.toml", issuer="http://127.0.0.1:9", open_browser=False)
    portal = create_app(settings, launch_token="t" * 43).state.portal
    first, second = portal.logins.new(settings), portal.logins.new(settings)
    callback = "http://localhost:1455/auth/callback"
    outcomes: list[tuple[object, str]] = []

    async def main() -> None:
        assert await finish_login(portal, QueryParams(f"error=access_denied&state={first.state}"))
        assert await finish_login(portal, QueryParams(f"error=access_denied&state={first.state}")) is None
        read, write = os.pipe()
        os.write(write, f"{callback}?code=c&state={first.state}\n".encode())
        os.write(write, f"{callback}?error=access_denied&state={second.state}\n".encode())
        os.close(write)
        with os.fdopen(read) as stream:
            await read_pastes(
                portal,
                1455,
                finished=lambda: bool(outcomes),
                on_login=lambda creds, message: outcomes.append((creds, message)),
                on_cancel=lambda exc: outcomes.append((None, exc.message)),
                stream=stream,
            )

    import asyncio

    # (In a thread: this module's sync Playwright keeps an event loop running in the main one.)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(30)
    assert not runner.is_alive() and not failures, failures
    assert capsys.readouterr().err == NOT_FROM_HERE + "\n"
    assert outcomes == [
        (None, "Sign-in failed: the provider refused the sign-in (access_denied); nothing was changed")
    ]
    assert len(portal.logins) == 0 and not (tmp_path / "config.toml").exists()
