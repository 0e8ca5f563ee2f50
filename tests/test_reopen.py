"""Getting back in (issue 11, item 4): a lost tab costs one command, for the person only.

A serving portal records its port and a secret in $CODEX_HOME/codex-portal-serve.json (0600);
`codex-portal` (or `serve`, or `open`) run again with the same CODEX_HOME presents that secret to
POST /api/link and prints a fresh one-time link, before any port fallback, and exits 0. Two real
processes here. A wrong secret, no secret, a cross-site browser, another CODEX_HOME and a second
local uid (`nobody`, through setpriv) get nothing; where CODEX_HOME cannot be written (an immutable
folder: even root cannot write it) there is no record, and both sides say a new link needs a restart.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import free_port
from tests.support import NOBODY, SYSTEM_PYTHON, held, needs_second_user
from webapp.reopen import LINK_HEADER, LINK_PATH, RECORD_NAME
from webapp.security import Sessions
from webapp.settings import DEFAULT_PORT

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"http://localhost:(\d+)/\?token=([A-Za-z0-9_-]{43})")


def _env(home: Path, port: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "BROWSER", "SSH_"))}
    env.update(CODEX_HOME=str(home), CODEX_PORTAL_ISSUER="http://127.0.0.1:9", **extra)
    if port is not None:
        env["CODEX_PORTAL_PORT"] = str(port)
    return env


class Serving:
    """`python -m webapp serve --no-browser` in its own process."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webapp", "serve", "--no-browser"],
            env=_env(home, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready, "the portal printed nothing"
        self.url = self.proc.stdout.readline().strip()
        assert LINK.fullmatch(self.url), self.url

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return err


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    portal = Serving(tmp_path / "codex", free_port())
    try:
        yield portal
    finally:
        portal.stop()


def _again(
    home: Path, *args: str, port: int | None = None, default_issuer: bool = False
) -> subprocess.CompletedProcess[str]:
    env = _env(home, port)
    if default_issuer:  # (its discovery would go to a proxy that is not there: nothing leaves loopback)
        env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
        env.update(HTTPS_PROXY="http://127.0.0.1:9")
        del env["CODEX_PORTAL_ISSUER"]
    return subprocess.run(
        [sys.executable, "-m", "webapp", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _opens_a_session(url: str) -> bool:
    with httpx2.Client(follow_redirects=False, timeout=10) as browser:  # no cookie of any earlier one
        if browser.get(url).status_code != 303:
            return False
        return browser.get(url.split("?")[0]).status_code == 200


def test_running_it_again_prints_a_new_link_to_the_running_portal(serving: Serving) -> None:
    record = serving.home / RECORD_NAME
    st = record.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(serving.home.stat().st_mode) == 0o700
    saved = json.loads(record.read_text())
    assert saved["port"] == serving.port and saved["pid"] == serving.proc.pid and len(saved["secret"]) >= 43
    assert _opens_a_session(serving.url)  # the printed link, used: the tab is then lost

    # `codex-portal` again, same CODEX_HOME; also as the default issuer's portal on 1455, taken:
    # the running portal is found before any port fallback (no "using 1457" line).
    links = []
    for args, port in (
        (["serve", "--no-browser"], serving.port),
        (["--no-browser"], None),
        (["open", "--no-browser"], None),
    ):
        with held(DEFAULT_PORT):
            done = _again(serving.home, *args, port=port, default_issuer=port is None)
        assert done.returncode == 0, done.stderr
        assert done.stderr == (
            f"codex-portal is already serving {serving.home / 'config.toml'} on port {serving.port}; "
            "the link above is a new one-time link to it.\n"
        )
        (link,) = done.stdout.splitlines()
        found = LINK.fullmatch(link)
        assert found and int(found.group(1)) == serving.port
        assert saved["secret"] not in done.stdout + done.stderr
        links.append(link)
    assert len({serving.url, *links}) == 4
    assert not _opens_a_session(links[0])  # replaced by a newer one before it was used
    assert _opens_a_session(links[-1])
    assert not _opens_a_session(links[-1])  # one use
    assert not _opens_a_session(serving.url)  # the first stays spent

    err = serving.stop()
    assert saved["secret"] not in err
    assert not record.exists()  # removed when it stopped
    done = _again(serving.home, "open", "--no-browser")
    assert done.returncode == 1 and done.stdout == ""
    assert (
        done.stderr == f"Error: no codex-portal is serving {serving.home}; start one with `codex-portal`.\n"
    )


def test_without_the_secret_no_link_is_minted(serving: Serving) -> None:
    secret = json.loads((serving.home / RECORD_NAME).read_text())["secret"]
    base = f"http://localhost:{serving.port}"
    with httpx2.Client(base_url=base, follow_redirects=False, timeout=10) as client:
        assert client.post(LINK_PATH).status_code == 403
        assert client.post(LINK_PATH, headers={LINK_HEADER: Sessions.new_launch_token()}).status_code == 403
        assert client.post(LINK_PATH, headers={LINK_HEADER: secret[:-1]}).status_code == 403
        assert client.post(LINK_PATH, headers={LINK_HEADER: ""}).status_code == 403
        assert client.get(LINK_PATH, headers={LINK_HEADER: secret}).status_code == 405
        page = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}  # a page in the browser
        assert client.post(LINK_PATH, headers={LINK_HEADER: secret, **page}).status_code == 403
        denied = client.post(LINK_PATH, headers={LINK_HEADER: "wrong"})
        assert "token" not in denied.json() and denied.headers["cache-control"] == "no-store"
        # None of the refusals minted anything: the printed link still works.
        assert _opens_a_session(serving.url)
        minted = client.post(LINK_PATH, headers={LINK_HEADER: secret})
        assert minted.status_code == 200 and set(minted.json()) == {"token"}
        assert minted.headers["cache-control"] == "no-store"
    assert _opens_a_session(f"{base}/?token={minted.json()['token']}")


def test_another_codex_home_gets_no_link(serving: Serving, tmp_path: Path) -> None:
    other = tmp_path / "other"
    done = _again(other, "serve", "--no-browser", port=serving.port)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"Error: port {serving.port} is already in use, by another program or by a codex-portal serving "
        "another CODEX_HOME (it gives no link to this one); stop it or choose another with --port.\n"
    )
    done = _again(other, "open", "--no-browser")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"Error: no codex-portal is serving {other}; start one with `codex-portal`.\n"


def test_a_stale_record_is_not_trusted_and_is_cleared(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir(mode=0o700)
    record = home / RECORD_NAME
    record.write_text(
        json.dumps({"port": free_port(), "host": "127.0.0.1", "pid": 2**22 + 7, "secret": "s" * 43})
    )
    record.chmod(0o600)
    done = _again(home, "open", "--no-browser")
    assert done.returncode == 1
    gone = f"the codex-portal recorded in {record} is no longer running"
    assert done.stderr == f"Error: {gone}; start one with `codex-portal`.\n"
    assert not record.exists()
    record.write_text(json.dumps({"port": 1, "host": "127.0.0.1", "pid": 1, "secret": "s"}))
    record.chmod(0o644)  # readable by others: not one of ours
    done = _again(home, "open", "--no-browser")
    assert done.returncode == 1 and f"{record} was ignored: it is not a private file of yours" in done.stderr


def test_where_codex_home_cannot_be_written_a_new_link_needs_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir(mode=0o700)
    if subprocess.run(["chattr", "+i", str(home)], capture_output=True).returncode != 0:
        pytest.fail("chattr +i is needed to make a folder that even root cannot write")
    port = free_port()
    portal = None
    try:
        portal = Serving(home, port)
        again = _again(home, "serve", "--no-browser", port=port)
        opened = _again(home, "open", "--no-browser")
        err = portal.stop()
    finally:
        subprocess.run(["chattr", "-i", str(home)], check=True)
        if portal is not None:
            portal.stop()
    assert (
        f"Note: cannot write {home / RECORD_NAME}: operation not permitted. A lost link then needs a restart "
        "of codex-portal: a second `codex-portal` finds a running one through that file.\n"
    ) in err
    assert not (home / RECORD_NAME).exists()
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == (
        f"Error: port {port} is already in use. If it is codex-portal serving {home}, it could not record "
        f"itself there ({home} cannot be written), so it cannot give a new link: stop it and start it "
        "again. Otherwise choose another port with --port.\n"
    )
    assert opened.returncode == 1
    assert opened.stderr == (
        f"Error: no codex-portal is serving {home} that can give a new link: {home} cannot be written, "
        "so a portal serving it could not record itself there, and a new link needs a restart of that "
        "portal; start one with `codex-portal`.\n"
    )


# ---- another user of this machine ------------------------------------------------------------------
NOBODY_ASKS = r"""
import http.client, sys
port, secret = sys.stdin.read().split()
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
try:
    headers = {"Host": f"localhost:{port}", "X-Codex-Portal-Secret": secret}
    conn.request("POST", "/api/link", body=b"", headers=headers)
    print(conn.getresponse().status)
except (OSError, http.client.HTTPException) as exc:
    print(type(exc).__name__)
"""


@needs_second_user
def test_a_second_local_user_gets_nothing() -> None:
    folder = Path(tempfile.mkdtemp(prefix="codex-portal-reopen-"))
    folder.chmod(0o755)  # nobody may walk to CODEX_HOME (0700, so no further)
    portal = Serving(folder / "codex", free_port())
    try:
        secret = json.loads((portal.home / RECORD_NAME).read_text())["secret"]
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
            "CODEX_HOME": str(portal.home),
            "HOME": str(folder),
        }
        # nobody runs `codex-portal open` with the same CODEX_HOME: the record cannot be read.
        done = subprocess.run(
            [*NOBODY, SYSTEM_PYTHON, "-m", "webapp", "open", "--no-browser"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr == (
            f"Error: cannot read {portal.home / RECORD_NAME} (permission denied): only its owner gets a "
            "new link; start one with `codex-portal`.\n"
        )
        # Even with the secret (handed over here), nobody's connection is refused before it is read.
        asked = subprocess.run(
            [*NOBODY, SYSTEM_PYTHON, "-c", NOBODY_ASKS],
            input=f"{portal.port} {secret}",
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip() in ("403", "RemoteDisconnected", "ConnectionResetError"), asked.stdout
        assert _opens_a_session(portal.url)  # nothing was minted for nobody
    finally:
        portal.stop()
        shutil.rmtree(folder, ignore_errors=True)


NOBODY_LISTENS = r"""
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
server.settimeout(20)
try:
    conn, _ = server.accept()
    conn.settimeout(3)
    got = b""
    try:
        while chunk := conn.recv(4096):
            got += chunk
    except OSError:
        pass
    print(len(got), flush=True)
except OSError:
    print("no connection", flush=True)
"""


@needs_second_user
def test_the_secret_is_never_sent_to_another_users_program(tmp_path: Path) -> None:
    """A record left by a portal that died, whose port another user's program took since: the
    caller checks who holds the socket it reached, and sends nothing."""
    home = tmp_path / "codex"
    home.mkdir(mode=0o700)
    with subprocess.Popen(
        [*NOBODY, SYSTEM_PYTHON, "-c", NOBODY_LISTENS],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    ) as impostor:
        assert impostor.stdout is not None
        port = int(impostor.stdout.readline())
        record = home / RECORD_NAME
        record.write_text(
            json.dumps({"port": port, "host": "127.0.0.1", "pid": os.getpid(), "secret": "s" * 43})
        )
        record.chmod(0o600)
        done = _again(home, "open", "--no-browser")
        received = impostor.stdout.readline().strip()
        impostor.wait(timeout=20)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"Error: port {port} is held by a program of another user (uid 65534), not by your codex-portal: "
        "nothing was sent to it; start one with `codex-portal`.\n"
    )
    assert received == "0"  # connected, and not one byte was sent
