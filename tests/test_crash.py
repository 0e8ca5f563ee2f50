"""Crashes and concurrency with real processes.

1. Writers killed with SIGKILL at random moments, hundreds of times: after each kill the file parses,
   holds exactly the old or the new content, and the lock is free again.
2. The portal (the real server), several CLI processes and an external writer that honours the lock
   all write for a few seconds: no update is lost, every writer's saves appear in order, and the
   user's own content is intact.

Writers are forked from a "zygote" process that has imported the store once, so that a kill point
costs a fork, not a Python start.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from filelock import FileLock, Timeout

from tests.conftest import free_port
from tests.portal import PortalServer, page_csrf
from webapp.credentials import Credentials
from webapp.settings import Settings

USER_TEXT = """\
# Codex settings, written by hand
model = "o4-mini"   # the default model

[profiles.work]
model = "gpt-5"
# keep this comment
"""
KILLS = 300
SEED = int(os.environ.get("CRASH_SEED", "20251125"))
TEMP = re.compile(r"^\.config\.toml\..+\.tmp$")

ZYGOTE = r"""
import os, sys
from pathlib import Path

import filelock, tomlkit  # the write path, imported once before any fork
from tests.test_crash import save

path = Path(sys.argv[1])
while line := sys.stdin.readline():
    seq = int(line)
    pid = os.fork()
    if pid == 0:  # the writer: saves seq, seq + 1, ... until it is killed
        try:
            while True:
                save(path, seq)
                os.write(1, b"ok %d\n" % seq)
                seq += 1
        finally:
            os._exit(3)
    os.write(1, b"pid %d\n" % pid)
    _, status = os.waitpid(pid, 0)
    os.write(1, b"dead %d %d\n" % (pid, status))
"""


def tokens(seq: int) -> Credentials:
    """Growing values, so that a file cut anywhere differs from every whole one."""
    return Credentials.oauth(
        access_token=f"at-{seq:06d}-" + "a" * (seq * 37 % 6000),
        refresh_token=f"rt-{seq:06d}-" + "r" * (seq % 300),
        expires_at=1_700_000_000 + seq,
        id_token=f"id-{seq:06d}-" + "i" * (seq * 11 % 2000),
        issuer="https://auth.example.com",
        client_id="app_crash",
    )


def api_key(seq: int) -> str:
    return f"sk-{seq:06d}-" + "k" * (seq * 7 % 480)


def save(path: Path, seq: int) -> None:
    """Write number seq: OAuth tokens when odd, an API key when even."""
    from webapp.stores import ConfigTomlStore

    store = ConfigTomlStore(path, lock_timeout=30)
    if seq % 2:
        store.save(tokens(seq))
    else:
        store.save_api_key(api_key(seq))


def expected(seq: int) -> str:
    """The whole file after write number seq (0: before any)."""
    if seq == 0:
        return USER_TEXT
    if seq % 2 == 0:
        return USER_TEXT + f'\n[auth]\napi_key = "{api_key(seq)}"\n'
    t = tokens(seq)
    return USER_TEXT + (
        f'\n[auth]\naccess_token = "{t.access_token}"\nrefresh_token = "{t.refresh_token}"\n'
        f'expires_at = {t.expires_at}\nid_token = "{t.id_token}"\nissuer = "{t.issuer}"\n'
        f'client_id = "{t.client_id}"\n'
    )


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if TEMP.match(p.name))


def lock_is_free(lock_path: Path) -> bool:
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def python_env() -> dict[str, str]:
    """The environment for child Pythons: `tests` and `webapp` importable from this checkout."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


@dataclass
class Zygote:
    process: subprocess.Popen[str]
    early: list[int] = field(default_factory=list)  # writes reported before the zygote named the pid

    def line(self) -> str:
        assert self.process.stdout is not None
        text = self.process.stdout.readline()
        assert text, f"the zygote died: {self.process.poll()}"
        return text.strip()

    def start(self, seq: int) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{seq}\n")
        self.process.stdin.flush()
        self.early = []
        while True:
            kind, number = self.line().split()
            if kind == "pid":
                return int(number)
            assert kind == "ok", kind
            self.early.append(int(number))

    def reap(self, pid: int) -> tuple[list[int], int]:
        """The writes the writer reported, and its wait status, once it is dead and reaped."""
        done, self.early = self.early, []
        while True:
            words = self.line().split()
            if words[0] == "ok":
                done.append(int(words[1]))
            else:
                assert words[:2] == ["dead", str(pid)], words
                return done, int(words[2])


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    process = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(tmp_path / "config.toml")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        yield Zygote(process)
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the zygote's loop ends
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()


# ---- 1. kills -------------------------------------------------------------------------------------


def test_writers_killed_at_random_moments(zygote: Zygote, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(USER_TEXT)
    lock_path = tmp_path / "config.toml.lock"
    rng = random.Random(SEED)
    current = 0  # the write whose content the file holds
    writes = old = new = mid_write = 0
    leftovers: list[Path] = []
    for kill in range(KILLS):
        pid = zygote.start(current + 1)
        time.sleep(rng.uniform(0, 0.03))  # the random moment is the point of the test
        os.kill(pid, signal.SIGKILL)
        done, status = zygote.reap(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill, status)
        assert done == list(range(current + 1, current + 1 + len(done))), (kill, done)
        reported = done[-1] if done else current
        writes += len(done)
        text = config.read_text()
        tomllib.loads(text)  # parses
        if text == expected(reported):
            old += 1
        elif text == expected(reported + 1):
            new += 1  # killed after the rename, before it could say so
            writes += 1
        else:
            pytest.fail(f"kill {kill} (seed {SEED}): the file is neither write {reported} nor the next")
        current = reported if text == expected(reported) else reported + 1
        assert lock_is_free(lock_path), f"kill {kill}: the lock outlived its holder"
        found = temp_files(tmp_path)
        fresh = set(found) - set(leftovers)
        assert len(fresh) <= 1, f"kill {kill} left {len(fresh)} temporary files"
        for temp in fresh:  # the write the kill interrupted, cut short
            assert temp.stat().st_mode & 0o077 == 0  # private even when abandoned
            assert expected(current + 1).startswith(temp.read_text())
            mid_write += 1
        leftovers = found
    assert config.stat().st_mode & 0o777 == 0o600
    print(
        f"\nkills: {KILLS} (seed {SEED}); writes completed: {writes}; file after a kill was the old "
        f"content {old} times, the new one {new} times, torn 0 times; kills that landed mid-write and "
        f"left a temporary file: {mid_write}; stale temporary files now in the folder: {len(leftovers)}"
    )
    assert len(leftovers) <= mid_write  # no more than the kills mid-write could leave


STALL = r"""
import os, sys
from pathlib import Path
from webapp.stores import ConfigTomlStore

def stall(fd):  # inside the write: the temporary file is written, not yet renamed
    os.write(1, b"inside\n")
    os.read(0, 1)  # blocks until the parent kills this process

os.fsync = stall
ConfigTomlStore(Path(sys.argv[1])).save_api_key("sk-abandoned-in-the-temp-file-0001")
"""


def _stalled_writer(config: Path) -> subprocess.Popen[bytes]:
    """A writer stopped inside its write (after the temp file is written, before the rename)."""
    process = subprocess.Popen(
        [sys.executable, "-c", STALL, str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=python_env(),
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == b"inside\n"
    except BaseException:
        process.kill()
        process.communicate(timeout=10)
        raise
    return process


def test_killed_mid_write_leaves_the_old_file_and_a_free_lock(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(USER_TEXT)
    process = _stalled_writer(config)
    try:
        assert not lock_is_free(tmp_path / "config.toml.lock")  # held while it writes
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert config.read_text() == USER_TEXT
    assert lock_is_free(tmp_path / "config.toml.lock")
    (temp,) = temp_files(tmp_path)
    assert "sk-abandoned" in temp.read_text() and temp.stat().st_mode & 0o777 == 0o600
    save(config, 2)
    assert config.read_text() == expected(2)


def test_next_save_removes_temp_files_of_killed_writers(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(USER_TEXT)
    process = _stalled_writer(config)
    process.kill()
    process.communicate(timeout=10)
    assert len(temp_files(tmp_path)) == 1
    save(config, 2)
    assert temp_files(tmp_path) == []


# ---- 2. everyone at once ----------------------------------------------------------------------------

DURATION = 6.0  # seconds of writing
CLI_WRITERS = 3
INITIAL = (
    USER_TEXT
    + '\n[stats]\ncounter = 0  # incremented by another tool\n\n[auth]\napi_key = "sk-initial-0000"\n'
)

EXTERNAL = r"""
import os, sys, tempfile, time
from pathlib import Path
import tomlkit
from filelock import FileLock

path, deadline = Path(sys.argv[1]), float(sys.argv[2])
lock = FileLock(str(path) + ".lock")
count = 0
while time.time() < deadline:
    with lock:
        doc = tomlkit.parse(path.read_text())
        doc["stats"]["counter"] = int(doc["stats"]["counter"]) + 1
        print("seen", doc["auth"]["api_key"], flush=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".external.", suffix=".tmp")
        with open(fd, "w") as file:
            file.write(tomlkit.dumps(doc))
        os.replace(temp, path)
        count += 1
    time.sleep(0.002)  # a tool that writes often, not one that holds the lock for ever
print("count", count, flush=True)
"""


@dataclass
class Saves:
    """(writer, number, start, end) of every API-key save that returned."""

    done: list[tuple[str, int, float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def add(self, writer: str, number: int, start: float) -> None:
        with self.guard:
            self.done.append((writer, number, start, time.monotonic()))

    def fail(self, text: str) -> None:
        with self.guard:
            self.errors.append(text)


def key_of(writer: str, number: int) -> str:
    return f"sk-{writer}-{number:05d}-abcdefghijklmnop"


def parse_key(key: str) -> tuple[str, int]:
    match = re.fullmatch(r"sk-(\w+)-(\d{5})-abcdefghijklmnop", key)
    assert match, key
    return match.group(1), int(match.group(2))


def portal_writer(server: PortalServer, saves: Saves, deadline: float) -> None:
    with httpx2.Client(base_url=server.base_url, follow_redirects=False, timeout=30) as browser:
        assert browser.get(server.launch_url).status_code == 303
        csrf = page_csrf(browser)
        number = 0
        while time.monotonic() < deadline:
            number += 1
            start = time.monotonic()
            response = browser.post(
                "/api-key", data={"csrf_token": csrf, "api_key": key_of("portal", number)}
            )
            if response.status_code != 303:
                saves.fail(f"portal save {number}: HTTP {response.status_code} {response.text[:300]}")
                return
            saves.add("portal", number, start)
            status = browser.get("/api/status")  # a lock-free read while everyone writes
            if status.status_code != 200 or not status.json()["signed_in"]:
                saves.fail(f"portal status after save {number}: {status.status_code} {status.text[:300]}")
                return


def cli_writer(name: str, home: Path, saves: Saves, deadline: float) -> None:
    env = {**python_env(), "CODEX_HOME": str(home), "CODEX_PORTAL_ISSUER": "http://127.0.0.1:9"}
    number = 0
    while time.monotonic() < deadline:
        number += 1
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "webapp", "login", "--api-key"],
            input=key_of(name, number) + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0 or not result.stderr.startswith("Saved API key"):
            saves.fail(f"{name} save {number}: exit {result.returncode}: {result.stderr.strip()}")
            return
        saves.add(name, number, start)


def test_portal_cli_and_external_writer_lose_nothing(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    config = home / "config.toml"
    config.write_text(INITIAL)
    settings = Settings(config_path=config, issuer="http://127.0.0.1:9", port=free_port(), open_browser=False)
    saves = Saves()
    with PortalServer(settings, launch_token="crash-launch-token-0123456789abcdef") as server:
        deadline = time.monotonic() + DURATION
        external = subprocess.Popen(
            [sys.executable, "-c", EXTERNAL, str(config), str(time.time() + DURATION)],
            stdout=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        threads = [threading.Thread(target=portal_writer, args=(server, saves, deadline))]
        threads += [
            threading.Thread(target=cli_writer, args=(f"cli{n}", home, saves, deadline))
            for n in range(CLI_WRITERS)
        ]
        for thread in threads:
            thread.start()
        try:
            out, _ = external.communicate(timeout=DURATION + 60)
        finally:
            external.kill()
        for thread in threads:
            thread.join(DURATION + 60)
            assert not thread.is_alive()
    assert external.returncode == 0 and not saves.errors, saves.errors

    lines = out.splitlines()
    increments = int(lines[-1].removeprefix("count "))
    seen = [line.removeprefix("seen ") for line in lines[:-1]]
    text = config.read_text()
    data = tomllib.loads(text)
    final_key = data["auth"]["api_key"]
    lost = increments - data["stats"]["counter"]
    writers = ["portal", *(f"cli{n}" for n in range(CLI_WRITERS))]
    by_writer = {w: sum(1 for s in saves.done if s[0] == w) for w in writers}
    cli_saves = sum(by_writer.values()) - by_writer["portal"]
    observed = len({key for key in seen if key.startswith("sk-cli")})
    print(
        f"\nsaves: {by_writer}; external increments: {increments}; lost updates: {lost}; "
        f"distinct CLI keys seen by the external writer: {observed} of {cli_saves}"
    )
    assert lost == 0, f"{lost} of {increments} increments lost"
    assert text == INITIAL.replace("counter = 0", f"counter = {increments}").replace(
        "sk-initial-0000", final_key
    )  # the user's text byte for byte, the counter, one key

    # Each writer saves one key after another: whoever looks under the lock sees them in that order.
    last: dict[str, int] = {}
    for key in seen:
        if key == "sk-initial-0000":
            assert not last
            continue
        writer, number = parse_key(key)
        assert number >= last.get(writer, 0), f"{key} seen after {writer} {last[writer]}"
        last[writer] = number
    # The final key is the last save: no save began after it had returned.
    ends = {(w, n): end for w, n, _, end in saves.done}
    final_end = ends[parse_key(final_key)]
    assert all(start < final_end for _, _, start, _ in saves.done)
