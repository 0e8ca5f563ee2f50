"""`make demo` (demo/demo.py) as a newcomer runs it: the test provider and the portal start, the printed
link signs in through the provider's pages, the tokens land in a throwaway CODEX_HOME (never ~/.codex),
and Ctrl-C stops both processes, leaving none behind."""

from __future__ import annotations

import os
import queue
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx2

from tests.conftest import free_port
from tests.idp import TestProvider
from tests.portal import page_csrf

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "demo.py"
START_TIMEOUT = 40.0  # seconds: node starts in ~0.3 s and the portal in ~1 s; the suite may be busy
STOP_TIMEOUT = 10.0  # seconds for the demo and both children to be gone after Ctrl-C


class _Output:
    """The lines a process prints on one stream, read by a thread, awaited with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("the demo closed its output; it printed:\n" + self.text())
            self.lines.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"not printed within {timeout:.0f} s; the demo printed:\n" + self.text())

    def rest(self) -> str:
        """Everything, once the process has exited."""
        self._thread.join(timeout=STOP_TIMEOUT)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.text()
            if line is not None:
                self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


class _Demo:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.out = _Output(process.stdout)
        self.err = _Output(process.stderr)

    def value(self, label: str) -> str:
        line = self.out.wait_for(lambda line: line.strip().startswith(label))
        return line.strip()[len(label) :].split()[0]

    def launch_url(self, port: int) -> str:
        return self.out.wait_for(lambda line: line.startswith(f"http://localhost:{port}/?token="))


@contextmanager
def _run_demo(*args: str, env: dict[str, str]) -> Iterator[_Demo]:
    """The demo in its own session, as a terminal runs a command; killed with its session at the end."""
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--no-browser", "--provider-port", str(free_port()), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield _Demo(process)
    finally:
        if process.poll() is None:  # the test failed: leave nothing running
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        for pid in _session_members(process.pid):
            os.kill(pid, signal.SIGKILL)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def _demo_env(tmp_path: Path) -> dict[str, str]:
    """A newcomer's environment: a HOME of their own (with no ~/.codex yet) and no CODEX_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "IDP_"))}
    return {**env, "HOME": str(home)}


def _session_members(session: int) -> list[int]:
    """Processes of the session the demo leads (its children stay in it): orphans, after it exits."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Waits on pidfds (readable once the process has exited); returns the pids still running."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass  # already gone
    try:
        deadline = time.monotonic() + timeout
        waiting = set(fds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(waiting), [], [], left)
            waiting -= set(ready)
        return [fds[fd] for fd in waiting]
    finally:
        for fd in fds:
            os.close(fd)


def _sign_in(port: int, launch_url: str, issuer: str) -> None:
    """A person's sign-in: the link, Sign in, the demo provider's login and consent pages, back."""
    provider = TestProvider()  # drives the demo's provider: no process of its own
    provider.issuer = issuer
    with httpx2.Client(
        base_url=f"http://localhost:{port}", follow_redirects=False, timeout=30, trust_env=False
    ) as browser:
        assert browser.get(launch_url).status_code == 303
        start = browser.post("/login", data={"csrf_token": page_csrf(browser)})
        assert start.status_code == 303, start.text
        assert start.headers["location"].startswith(f"{issuer}/")
        callback = provider.login_without_browser(start.headers["location"], login="newcomer")
        assert callback.startswith(f"http://localhost:{port}/auth/callback?")
        assert browser.get(callback).status_code == 303
        page = browser.get("/").text
        assert "newcomer@example.test" in page


def test_demo_signs_in_into_a_throwaway_codex_home_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    env = _demo_env(tmp_path)
    port = free_port()
    with _run_demo("--port", str(port), "--fresh", env=env) as demo:
        issuer = demo.value("Test provider:")
        config = Path(demo.value("Config file:"))
        url = demo.launch_url(port)
        exports = demo.out.wait_for(lambda line: line.strip().startswith("export CODEX_HOME="))
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", issuer)
        assert config.name == "config.toml" and not config.is_relative_to(Path(env["HOME"]))
        assert not config.exists()
        children = [pid for pid in _session_members(demo.process.pid) if pid != demo.process.pid]
        commands = [_command(pid) for pid in children]
        assert any("provider.js" in c for c in commands) and any("webapp serve" in c for c in commands)

        _sign_in(port, url, issuer)
        auth = tomllib.loads(config.read_text())["auth"]
        assert auth["issuer"] == issuer and auth["client_id"] == "codex-portal-test"
        assert auth["access_token"] and auth["refresh_token"] and isinstance(auth["expires_at"], int)
        assert config.stat().st_mode & 0o777 == 0o600
        changed = demo.out.wait_for(lambda line: line.startswith("config.toml changed:"))
        assert "access_token" in changed and "refresh_token" in changed

        # The command line, with the environment the demo printed for it.
        cli_env = dict(word.split("=", 1) for word in shlex.split(exports)[1:])
        assert cli_env == {
            "CODEX_HOME": str(config.parent),
            "CODEX_PORTAL_ISSUER": issuer,
            "CODEX_PORTAL_CLIENT_ID": "codex-portal-test",
            "CODEX_PORTAL_PORT": str(port),
        }
        status = subprocess.run(
            [sys.executable, "-m", "webapp", "status"],
            env={**env, **cli_env},
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        assert status.returncode == 0, status
        assert status.stdout.startswith("Signed in with OAuth as newcomer@example.test."), status.stdout

        demo.process.send_signal(signal.SIGINT)  # Ctrl-C to the demo alone: it must stop the others
        assert demo.process.wait(timeout=STOP_TIMEOUT) == 0, demo.err.rest()
        assert _session_members(demo.process.pid) == []  # it waited for both before exiting
        assert _wait_gone(children, STOP_TIMEOUT) == []
        out, err = demo.out.rest(), demo.err.rest()
    assert "Stopped the portal and the test provider" in out
    assert "Traceback" not in out + err
    assert not config.parent.exists()  # the throwaway CODEX_HOME is gone
    assert not (Path(env["HOME"]) / ".codex").exists()  # and the newcomer's own was never touched
    for secret in (auth["access_token"], auth["refresh_token"], auth["id_token"]):
        assert secret not in out + err


def test_demo_ctrl_c_in_the_terminal_stops_everything_and_keeps_a_given_codex_home(tmp_path: Path) -> None:
    codex_home = tmp_path / "my-codex"
    codex_home.mkdir()
    mine = '# my settings\nmodel = "o3"\n'
    (codex_home / "config.toml").write_text(mine)
    port = free_port()
    with _run_demo("--port", str(port), "--codex-home", str(codex_home), env=_demo_env(tmp_path)) as demo:
        issuer = demo.value("Test provider:")
        assert Path(demo.value("Config file:")) == codex_home.resolve() / "config.toml"
        demo.launch_url(port)
        members = [pid for pid in _session_members(demo.process.pid) if pid != demo.process.pid]
        assert len(members) == 2, [_command(pid) for pid in members]  # node and the portal

        os.killpg(demo.process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        assert demo.process.wait(timeout=STOP_TIMEOUT) == 0, demo.err.rest()
        assert _session_members(demo.process.pid) == []
        assert _wait_gone(members, STOP_TIMEOUT) == []
        out, err = demo.out.rest(), demo.err.rest()
    assert "Traceback" not in out + err, out + err
    assert (codex_home / "config.toml").read_text() == mine  # the folder the person named is kept
    with socket.socket() as sock:  # nobody answers on the provider's port any more
        sock.settimeout(5)
        assert sock.connect_ex(("127.0.0.1", int(issuer.rsplit(":", 1)[1]))) != 0


def test_demo_names_a_sign_in_from_another_provider_in_a_kept_codex_home(tmp_path: Path) -> None:
    codex_home = tmp_path / "kept"
    codex_home.mkdir()
    earlier = '# mine\n[auth]\naccess_token = "at-earlier"\nissuer = "http://127.0.0.1:1"\n'
    (codex_home / "config.toml").write_text(earlier)
    port = free_port()
    with _run_demo("--port", str(port), "--codex-home", str(codex_home), env=_demo_env(tmp_path)) as demo:
        note = demo.out.wait_for(lambda line: line.startswith("Note:"))
        now = demo.out.wait_for(lambda line: line.startswith("config.toml "))
        demo.launch_url(port)
        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(timeout=STOP_TIMEOUT) == 0, demo.err.rest()
        out = demo.out.rest()
    assert note.startswith(
        "Note: the config file holds a sign-in from another provider (http://127.0.0.1:1);"
    )
    assert now == "config.toml now: [auth] has access_token, issuer (values not shown)"
    assert "config.toml changed" not in out and "at-earlier" not in out
    assert (codex_home / "config.toml").read_text() == earlier


def test_demo_exits_with_the_portals_reason_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with _run_demo("--port", str(port), env=_demo_env(tmp_path)) as demo:
            assert demo.process.wait(timeout=START_TIMEOUT) == 1
            assert _session_members(demo.process.pid) == []  # the provider was stopped, not orphaned
            out, err = demo.out.rest(), demo.err.rest()
    assert f"port {port} is already in use" in err and "--port" in err, err
    assert "Traceback" not in out + err
    assert "?token=" not in out  # no link to a portal that is not there


def test_demo_without_the_provider_installed_says_what_to_run(tmp_path: Path) -> None:
    """Copied elsewhere without tests/provider/node_modules, the demo points at `make demo`."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "demo" / "demo.py").write_text(DEMO.read_text())
    for name in ("__init__.py", "idp.py"):
        (tmp_path / "tests" / name).write_text((ROOT / "tests" / name).read_text())
    result = subprocess.run(
        [sys.executable, str(tmp_path / "demo" / "demo.py"), "--no-browser"],
        cwd=tmp_path,
        env=_demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 1
    assert "make demo" in result.stderr and "node_modules" in result.stderr
    assert "Traceback" not in result.stderr


def test_portal_pressing_ctrl_c_twice_prints_no_traceback(tmp_path: Path) -> None:
    env = {
        **_demo_env(tmp_path),
        "CODEX_HOME": str(tmp_path / "codex"),
        "CODEX_PORTAL_ISSUER": "http://127.0.0.1:9",
    }
    port = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "webapp", "serve", "--no-browser", "--port", port],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = _Output(process.stdout), _Output(process.stderr)
    try:
        out.wait_for(lambda line: line.startswith(f"http://localhost:{port}/"))
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)  # a person's second press, while the first shutdown runs (measured: 5-150 ms)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=STOP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        process.stdout.close()
        process.stderr.close()
    assert "Interrupted." in err.rest()
    assert "Traceback" not in err.rest(), err.rest()


def test_demo_runs_again_on_the_same_folder_and_provider_address(tmp_path: Path) -> None:
    """Lost the tab? Run the demo again: the same CODEX_HOME (under the person's HOME, not ~/.codex),
    the same provider address, so the printed `export` line still holds."""
    env = _demo_env(tmp_path)
    provider_port = free_port()
    seen = []
    for _ in range(2):
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                str(DEMO),
                "--no-browser",
                "--port",
                str(port),
                "--provider-port",
                str(provider_port),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        demo = _Demo(process)
        try:
            issuer, config = demo.value("Test provider:"), demo.value("Config file:")
            demo.launch_url(port)
            exports = demo.out.wait_for(lambda line: line.strip().startswith("export CODEX_HOME="))
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=STOP_TIMEOUT) == 0, demo.err.rest()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            assert process.stdout is not None and process.stderr is not None
            process.stdout.close()
            process.stderr.close()
        seen.append((issuer, config, exports.replace(str(port), "PORT")))
        assert f"CODEX_PORTAL_PORT={port}" in exports
    assert seen[0] == seen[1]
    assert seen[0][0] == f"http://127.0.0.1:{provider_port}"
    assert Path(seen[0][1]) == Path(env["HOME"]) / ".local" / "state" / "codex-portal-demo" / "config.toml"
    assert not (Path(env["HOME"]) / ".codex").exists()
