"""Bad input to config.toml through the real entry points: `python -m webapp login --api-key` with
standard input, and POST /api-key through the in-process portal (`browser_client`).

A refused key or a file that cannot be written must leave every byte of the folder as it was (no
temporary file left behind), and say so in one clear line that names the file and echoes no part of
the key; the page shows the message, never a traceback. tests/test_store.py covers the store's own
unit behaviour; this file covers what reaches a person.

The tests run as root, where permission bits stop nothing. Real faults stand in: `chattr +i`
(EPERM), a read-only bind mount (EROFS), a 64 KiB tmpfs filled up (ENOSPC); and for chmod 0400 and
0500 the CLI runs in a user namespace (`unshare --user`), where the kernel enforces permission bits
on root's files as it does for anyone else.
"""

from __future__ import annotations

import contextlib
import errno
import html
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import csrf_token
from webapp.settings import Settings

FRAGMENT = "QJ7XFRAG"  # in every refused key: it must never be echoed
VALID_KEY = "sk-proj-faults0123456789abcdWXYZ"
OLD_KEY = "sk-old-key-0000000000000000wxyz"
USER_TEXT = '# my settings\nmodel = "o3"   # keep\n\n[tools]\nweb_search = true\n'
ORIGINAL = USER_TEXT + f'\n[auth]\napi_key = "{OLD_KEY}"\n'
SAVED = USER_TEXT + f'\n[auth]\napi_key = "{VALID_KEY}"\n'
IS_ROOT = os.geteuid() == 0
CLI_TIMEOUT = 30.0

BAD_KEYS = {
    "newline": f"sk-{FRAGMENT}-first\nsecond-half",
    "evil-table": f"sk-{FRAGMENT}-abcdef\n[evil]",
    "quote-injection": f'sk-{FRAGMENT}"\nmodel = "pwned',
    "nul": f"sk-{FRAGMENT}\x00tail0123456789",
    "rlo-u202e": f"sk-\u202e{FRAGMENT}-0123456789",
    "lri-u2066": f"sk-{FRAGMENT}\u2066abc\u2069-0123456789",
    "zero-width-space": f"sk-{FRAGMENT}\u200b0123456789",
    "zero-width-joiner": f"sk-{FRAGMENT}\u200d0123456789",
    "bom-first": f"\ufeffsk-{FRAGMENT}-0123456789",
    "inner-space": f"sk-{FRAGMENT} 0123456789",
    "tab": f"sk-{FRAGMENT}\t0123456789",
    "del": f"sk-{FRAGMENT}\x7f0123456789",
    "non-ascii": f"sk-{FRAGMENT}-ключ-0123456789",
    "513-chars": f"sk-{FRAGMENT}" + "x" * 510,
    "empty": "",
    "blank": " \r\n\t\n",
    "1-MiB": f"sk-{FRAGMENT}" + "x" * (1 << 20),
}


# ---- helpers ---------------------------------------------------------------------------------------


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_PORTAL_")}
    env.update(CODEX_HOME=str(home), CODEX_PORTAL_ISSUER="http://127.0.0.1:9")  # nothing listens there
    return env


def run_cli(
    home: Path, stdin: bytes, *args: str, prefix: tuple[str, ...] = (), extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, sys.executable, "-m", "webapp", *(args or ("login", "--api-key"))]
    process = subprocess.run(
        argv, input=stdin, env={**cli_env(home), **(extra or {})}, capture_output=True, timeout=CLI_TIMEOUT
    )
    return subprocess.CompletedProcess(
        argv,
        process.returncode,
        process.stdout.decode(errors="replace"),
        process.stderr.decode(errors="replace"),
    )


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under folder (symlinks not followed), with its bytes, link target or device."""
    entries: dict[str, object] = {}

    def walk(directory: Path) -> None:
        with os.scandir(directory) as scan:
            for entry in scan:
                path = Path(entry.path)
                name = str(path.relative_to(folder))
                info = entry.stat(follow_symlinks=False)
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISLNK(info.st_mode):
                    entries[name] = ("link", os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    entries[name] = ("dir", mode)
                    walk(path)
                elif stat.S_ISREG(info.st_mode):
                    entries[name] = ("file", mode, path.read_bytes())
                else:
                    entries[name] = ("special", stat.S_IFMT(info.st_mode), info.st_rdev)

    walk(folder)
    return entries


def without_lock(entries: dict[str, object]) -> dict[str, object]:
    """Lock files may be created (empty, 0600): config.toml's and the Codex CLI's auth.lock."""
    locks = ("config.toml.lock", "auth.lock")
    return {name: value for name, value in entries.items() if not name.endswith(locks)}


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


def assert_no_key_echo(text: str) -> None:
    assert FRAGMENT not in text and "evil" not in text and "pwned" not in text


def post_key(client: TestClient, key: str) -> tuple[int, str]:
    response = client.post("/api-key", data={"csrf_token": csrf_token(client), "api_key": key})
    if response.status_code == 303:
        assert response.headers["location"] == "/"
        return 303, client.get("/").text
    return response.status_code, response.text


def assert_clean_page(text: str) -> None:
    assert "Traceback" not in text and 'File "/' not in text


# ---- real faults as root ---------------------------------------------------------------------------


def need_root(what: str) -> None:
    if not IS_ROOT:
        pytest.skip(f"{what} needs root; as another user permission bits make this case directly")


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    need_root("chattr +i")
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def mounted(folder: Path, *options: str) -> Iterator[None]:
    need_root("mount")
    done = subprocess.run(["mount", *options, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(options)} is not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[None]:
    with mounted(folder, "--bind", str(folder)):
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        yield


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[None]:
    """A 64 KiB tmpfs holding the original file and the lock, then filled to the last byte."""
    with mounted(folder, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"):
        (folder / "config.toml").write_text(ORIGINAL)
        (folder / "config.toml.lock").touch(mode=0o600)
        filler = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(filler, b"\0" * 4096):
                    pass
        finally:
            os.close(filler)
        with pytest.raises(OSError) as info:
            (folder / "probe").write_bytes(b"x")
        assert info.value.errno == errno.ENOSPC
        (folder / "probe").unlink(missing_ok=True)
        yield


@dataclass(frozen=True)
class Fault:
    """A broken config folder: arrange(config) holds the fault while the save is tried."""

    arrange: Callable[[Path], contextlib.AbstractContextManager[None]]
    message: str  # what the one line must say, after the file's path
    lock_named: bool = False  # the message names config.toml.lock (the folder refuses even the lock)


@contextlib.contextmanager
def _corrupt(config: Path) -> Iterator[None]:
    config.write_text('model = "o3"\n[auth\napi_key = "sk-old"\n')
    yield


@contextlib.contextmanager
def _directory(config: Path) -> Iterator[None]:
    config.mkdir()
    (config / "inside.txt").write_text("mine\n")
    yield


@contextlib.contextmanager
def _not_utf8(config: Path) -> Iterator[None]:
    config.write_bytes(b'model = "o3"\n# caf\xe9 cr\xe8me\n')
    yield


@contextlib.contextmanager
def _symlink_loop(config: Path) -> Iterator[None]:
    config.symlink_to(config.name)
    yield


@contextlib.contextmanager
def _immutable_file(config: Path) -> Iterator[None]:
    config.write_text(ORIGINAL)
    with immutable(config):
        yield


@contextlib.contextmanager
def _immutable_folder(config: Path) -> Iterator[None]:
    config.write_text(ORIGINAL)
    for lock in ("config.toml.lock", "auth.lock"):
        config.with_name(lock).touch(mode=0o600)  # left by an earlier run
    with immutable(config.parent):
        yield


@contextlib.contextmanager
def _immutable_folder_without_lock(config: Path) -> Iterator[None]:
    config.write_text(ORIGINAL)
    with immutable(config.parent):
        yield


@contextlib.contextmanager
def _read_only_filesystem(config: Path) -> Iterator[None]:
    config.write_text(ORIGINAL)
    with read_only_mount(config.parent):
        yield


@contextlib.contextmanager
def _full_disk(config: Path) -> Iterator[None]:
    with full_disk(config.parent):
        yield


FAULTS = {
    "corrupt-toml": Fault(_corrupt, r"is not valid TOML: .*line 2"),
    "directory": Fault(_directory, "is a directory"),
    "not-utf8": Fault(_not_utf8, r"is not UTF-8 text \(line 2\)"),
    "symlink-loop": Fault(_symlink_loop, "too many levels of symbolic links"),
    "immutable-file": Fault(_immutable_file, "(operation not permitted|read-only)"),
    "immutable-folder": Fault(_immutable_folder, "operation not permitted"),
    "immutable-folder-no-lock": Fault(_immutable_folder_without_lock, "operation not permitted", True),
    "read-only-filesystem": Fault(_read_only_filesystem, "read-only file system", True),
    "full-disk": Fault(_full_disk, "no space left on device"),
}


def expected_line(config: Path, fault: Fault) -> str:
    named = f"{config}.lock" if fault.lock_named else str(config)
    return rf"^Error: (cannot (write|read|lock) )?{named}:? .*{fault.message}"


# ---- API keys through the CLI ----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "codex"
    folder.mkdir()
    (folder / "config.toml").write_text(ORIGINAL)
    return folder


@pytest.mark.parametrize("raw", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_cli_refuses_bad_key_and_changes_nothing(home: Path, raw: str) -> None:
    before = snapshot(home)
    result = run_cli(home, raw.encode())
    line = assert_one_line_error(result)
    assert_no_key_echo(line)
    assert snapshot(home) == before  # byte-identical, no lock taken, no temporary file


@pytest.mark.parametrize("raw", [VALID_KEY, f"  {VALID_KEY}\r\n", f"\t{VALID_KEY}\n\n"])
def test_cli_saves_a_valid_key(home: Path, raw: str) -> None:
    result = run_cli(home, raw.encode())
    assert result.returncode == 0 and result.stdout == ""
    saved_to = f"{home / 'config.toml'} and {home / 'auth.json'}"
    assert result.stderr == f"Saved API key sk-…WXYZ to {saved_to}.\n"
    assert (home / "config.toml").read_text() == SAVED
    codex = json.loads((home / "auth.json").read_text())
    assert codex == {"auth_mode": "apikey", "OPENAI_API_KEY": VALID_KEY}
    names = ["auth.json", "auth.lock", "codex-portal-accounts.json", "codex-portal-sync.json", "config.toml"]
    names.append("config.toml.lock")
    assert sorted(p.name for p in home.iterdir()) == names


def test_cli_key_that_is_not_utf8_is_refused_in_one_line(home: Path) -> None:
    before = snapshot(home)
    result = run_cli(
        home, f"sk-{FRAGMENT}-\xff\xfe-0123456789".encode("latin-1"), extra={"PYTHONIOENCODING": "utf-8"}
    )
    assert_no_key_echo(assert_one_line_error(result))
    assert snapshot(home) == before


# ---- API keys through the web form -----------------------------------------------------------------


@pytest.fixture
def web_config(settings: Settings) -> Path:
    settings.config_path.parent.mkdir()
    settings.config_path.write_text(ORIGINAL)
    return settings.config_path


@pytest.mark.parametrize("raw", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_web_refuses_bad_key_and_changes_nothing(
    browser_client: TestClient, web_config: Path, raw: str
) -> None:
    browser_client.get("/")  # the first look copies the saved key to auth.json (the stores in step)
    before = snapshot(web_config.parent)
    status, page = post_key(browser_client, raw)
    assert_no_key_echo(page)
    assert_clean_page(page)
    if len(raw.encode()) > 16 * 1024:
        assert status == 413  # the body cap answers before the form is read
    else:
        assert status == 303  # the page is reached by a redirect: a reload posts nothing again
        assert 'id="api_key_error"' in page and 'aria-invalid="true"' in page
        assert "API key" in page and 'name="api_key" type="password"' in page
    assert snapshot(web_config.parent) == before
    assert OLD_KEY not in browser_client.get("/").text  # the page shows a hint only


@pytest.mark.parametrize("raw", [VALID_KEY, f"  {VALID_KEY}\r\n"])
def test_web_saves_a_valid_key(browser_client: TestClient, web_config: Path, raw: str) -> None:
    status, page = post_key(browser_client, raw)
    assert status == 303
    assert "API key sk-…WXYZ saved." in page and VALID_KEY not in page
    assert web_config.read_text() == SAVED
    assert temp_files(web_config.parent) == []


# ---- broken files and folders ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_cli_file_fault_is_one_clear_line(tmp_path: Path, fault: Fault) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    config = home / "config.toml"
    with fault.arrange(config):
        before = without_lock(snapshot(tmp_path))
        result = run_cli(home, f"{VALID_KEY}\n".encode())
        after = without_lock(snapshot(tmp_path))
    line = assert_one_line_error(result)
    assert re.search(expected_line(config, fault), line), line
    assert VALID_KEY not in line
    assert after == before  # the original byte-identical, no temporary file left behind


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_web_file_fault_shows_the_error_without_traceback(
    browser_client: TestClient, settings: Settings, tmp_path: Path, fault: Fault
) -> None:
    config = settings.config_path
    config.parent.mkdir()
    with fault.arrange(config):
        browser_client.get("/")  # the first look brings auth.json in step where it can be written
        before = without_lock(snapshot(tmp_path))
        status, page = post_key(browser_client, VALID_KEY)
        status_page = browser_client.get("/")
        after = without_lock(snapshot(tmp_path))
    assert status == 500, page
    assert "Something went wrong" in page and 'role="alert"' in page
    message = expected_line(config, fault).removeprefix("^Error: ")
    assert re.search(message, html.unescape(page)), page
    assert VALID_KEY not in page
    assert_clean_page(page)
    assert status_page.status_code == 200 and VALID_KEY not in status_page.text
    assert_clean_page(status_page.text)
    assert after == before


# ---- forms that must be kept: a symlink stays a symlink, CRLF and a BOM stay ------------------------


@dataclass(frozen=True)
class Kept:
    config_text: str | None  # written to config.toml itself; None: arrange() builds the folder
    expected: str  # the text the save leaves where the config really is
    link: str | None = None  # config.toml is this symlink (relative, into ../dotfiles)


KEPT = {
    "symlink": Kept(None, SAVED, "../dotfiles/codex.toml"),
    "dangling-symlink": Kept(None, f'[auth]\napi_key = "{VALID_KEY}"\n', "../dotfiles/new/codex.toml"),
    "crlf": Kept(ORIGINAL.replace("\n", "\r\n"), SAVED.replace("\n", "\r\n")),
    "bom": Kept("\ufeff" + ORIGINAL, "\ufeff" + SAVED),
    "bom-crlf": Kept("\ufeff" + ORIGINAL.replace("\n", "\r\n"), "\ufeff" + SAVED.replace("\n", "\r\n")),
}


def arrange_kept(config: Path, case: Kept) -> Path:
    """Builds the folder; returns where the text really is."""
    if case.link is None:
        assert case.config_text is not None
        config.write_bytes(case.config_text.encode())
        return config
    target = (config.parent / case.link).resolve()
    if case.expected == SAVED:
        target.parent.mkdir(parents=True)
        target.write_text(ORIGINAL)
    config.symlink_to(case.link)
    return target


def check_kept(config: Path, target: Path, case: Kept) -> None:
    if case.link is not None:
        assert config.is_symlink() and os.readlink(config) == case.link
    assert target.read_bytes() == case.expected.encode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert temp_files(config.parent.parent) == []


@pytest.mark.parametrize("case", KEPT.values(), ids=KEPT.keys())
def test_cli_keeps_symlink_crlf_bom(tmp_path: Path, case: Kept) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    target = arrange_kept(home / "config.toml", case)
    result = run_cli(home, f"{VALID_KEY}\n".encode())
    assert result.returncode == 0 and result.stderr.startswith("Saved API key sk-…WXYZ"), result
    check_kept(home / "config.toml", target, case)
    status = run_cli(home, b"", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["api_key_hint"] == "sk-…WXYZ"


@pytest.mark.parametrize("case", KEPT.values(), ids=KEPT.keys())
def test_web_keeps_symlink_crlf_bom(browser_client: TestClient, settings: Settings, case: Kept) -> None:
    settings.config_path.parent.mkdir()
    target = arrange_kept(settings.config_path, case)
    status, page = post_key(browser_client, VALID_KEY)
    assert status == 303 and "API key sk-…WXYZ saved." in page
    check_kept(settings.config_path, target, case)


# ---- permission bits, enforced: the CLI as a user without root's override ---------------------------

USERNS = ("unshare", "--user", "--map-user=1000", "--map-group=1000")


def as_user() -> tuple[str, ...]:
    """A prefix that runs the CLI where chmod counts: as root, inside a user namespace (no
    CAP_DAC_OVERRIDE there, so root's own files get their owner bits enforced)."""
    if not IS_ROOT:
        return ()
    if shutil.which("unshare") is None:
        pytest.skip("as root, permission bits stop nothing, and unshare (util-linux) is missing")
    probe = subprocess.run([*USERNS, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"as root, permission bits stop nothing, and user namespaces are off: {probe.stderr}")
    return USERNS


@pytest.mark.parametrize("lock_exists", [True, False], ids=["lock-exists", "no-lock"])
def test_cli_read_only_folder_0500(home: Path, lock_exists: bool) -> None:
    prefix = as_user()
    if lock_exists:
        (home / "config.toml.lock").touch(mode=0o600)
    home.chmod(0o500)
    try:
        before = snapshot(home.parent)
        result = run_cli(home, f"{VALID_KEY}\n".encode(), prefix=prefix)
        after = snapshot(home.parent)
    finally:
        home.chmod(0o700)
    line = assert_one_line_error(result)
    # With config.toml.lock in place, the next lock to take is the Codex CLI's auth.lock.
    named = home / "auth.lock" if lock_exists else home / "config.toml.lock"
    assert line == f"Error: cannot lock {named}: permission denied."
    assert after == before


def test_cli_read_only_file_0400_is_not_replaced(home: Path) -> None:
    prefix = as_user()
    (home / "config.toml").chmod(0o400)
    before = snapshot(home.parent)
    result = run_cli(home, f"{VALID_KEY}\n".encode(), prefix=prefix)
    after = snapshot(home.parent)
    line = assert_one_line_error(result)
    assert line.startswith(f"Error: cannot write {home / 'config.toml'}: ")
    assert without_lock(after) == without_lock(before)


# ---- not a regular file ----------------------------------------------------------------------------


def test_cli_fifo_config_is_refused_not_waited_on(home: Path) -> None:
    (home / "config.toml").unlink()
    os.mkfifo(home / "config.toml")
    argv = [sys.executable, "-m", "webapp"]
    processes = [
        subprocess.Popen(
            [*argv, *args],
            env=cli_env(home),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (("status",), ("login", "--api-key"))
    ]
    try:
        deadline = time.monotonic() + 5
        results = []
        for process, stdin in zip(processes, ("", f"{VALID_KEY}\n"), strict=True):
            out, err = process.communicate(stdin, timeout=max(0.1, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    for result in results:
        assert "not a regular file" in assert_one_line_error(result)
    assert stat.S_ISFIFO((home / "config.toml").lstat().st_mode)


def test_cli_symlink_to_a_device_is_not_replaced(home: Path) -> None:
    need_root("mknod")
    os.mknod(home / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
    (home / "config.toml").unlink()
    (home / "config.toml").symlink_to("null")
    before = without_lock(snapshot(home))
    result = run_cli(home, f"{VALID_KEY}\n".encode())
    after = without_lock(snapshot(home))
    assert after == before, after
    assert "not a regular file" in assert_one_line_error(result)


# ---- reading needs no write access and creates nothing ----------------------------------------------
def test_a_read_only_home_can_be_read_and_a_no_op_needs_no_lock(home: Path) -> None:
    """`token`, `status`, `logout` with nothing to do and saving the key already saved: no lock file,
    no write; a write that cannot happen says why in one line."""
    saved = run_cli(home, f"{OLD_KEY}\n".encode())  # in step: auth.json written while writable
    assert saved.returncode == 0, saved.stderr
    for lock in home.glob("*.lock"):
        lock.unlink()
    before = snapshot(home)
    with read_only_mount(home):
        token = run_cli(home, b"", "token")
        status = run_cli(home, b"", "status")
        again = run_cli(home, f"{OLD_KEY}\n".encode())
        other = run_cli(home, f"{VALID_KEY}\n".encode())
    assert token.returncode == 0 and token.stdout == f"{OLD_KEY}\n", token.stderr
    assert status.returncode == 0 and "sk-…wxyz" in status.stdout
    assert again.returncode == 0, again.stderr
    line = assert_one_line_error(other)
    assert "read-only file system" in line and VALID_KEY not in line
    assert snapshot(home) == before


def test_reading_a_home_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "x" / "typo"
    for args in (("token",), ("status",), ("logout",), ("accounts",)):
        done = run_cli(typo, b"", *args)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()
    assert run_cli(typo, b"", "token").stderr.startswith("Error: not signed in")
