from __future__ import annotations

import base64
import errno
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from filelock import FileLock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp.credentials import API_KEY_MAX, Credentials, validate_api_key
from webapp.errors import ConfigError, PortalError
from webapp.stores import ConfigTomlStore

KEY = "sk-proj-0123456789abcdefghijWXYZ"
OTHER_KEY = "sk-other-9876543210zyxwvuts-abcd"


def jwt(claims: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


TOKENS = Credentials.oauth(
    access_token="at-secret-value",
    refresh_token="rt-secret-value",
    expires_at=1795566585,
    id_token=jwt({"email": "ada@example.com", "sub": "1"}),
    issuer="https://auth.example.com",
    client_id="app_test",
)
OAUTH = Credentials.oauth(
    access_token="at-secret-value",
    refresh_token="rt-secret-value",
    expires_at=1795566585,
    id_token=TOKENS.id_token,
    issuer="https://auth.example.com",
    client_id="app_test",
)
OAUTH_BLOCK = (
    '[auth]\naccess_token = "at-secret-value"\nrefresh_token = "rt-secret-value"\nexpires_at = 1795566585\n'
    f'id_token = "{TOKENS.id_token}"\nissuer = "https://auth.example.com"\nclient_id = "app_test"\n'
)
KEY_BLOCK = f'[auth]\napi_key = "{KEY}"\n'

USER_TEXT = """\
# Codex settings, written by hand
model = "o4-mini"   # the default model

approval_policy = "on-request"


[profiles.work]
model = "gpt-5"
# keep this comment

[[mcp_servers]]
name = "docs"
args = ["--port", 1234]
"""


def make_store(tmp_path: Path, text: str | None = None) -> ConfigTomlStore:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_bytes(text.encode())
    return ConfigTomlStore(path, lock_timeout=5)


def read(store: ConfigTomlStore) -> str:
    return store.path.read_bytes().decode()


def listing(folder: Path) -> list[str]:
    return sorted(child.name for child in folder.iterdir())


# Reading


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ('model = "x"\n', None),
        ("[auth]\n", None),
        ("[auth]\nnote = 1\n", None),
        ('[auth]\napi_key = ""\n', None),
        (f'[auth]\napi_key = "{KEY}"\n', Credentials(method="api_key", api_key=KEY)),
        (f'auth.api_key = "{KEY}"\n', Credentials(method="api_key", api_key=KEY)),
        (f'auth = {{ api_key = "{KEY}" }}\n', Credentials(method="api_key", api_key=KEY)),
        (
            f'[auth]\napi_key = "{KEY}"\naccess_token = "at"\nexpires_at = 5\nissuer = "i"\n',
            Credentials(method="oauth", access_token="at", expires_at=5, issuer="i"),
        ),
        (OAUTH_BLOCK, OAUTH),
        ("\ufeff" + KEY_BLOCK, Credentials(method="api_key", api_key=KEY)),
        (KEY_BLOCK.replace("\n", "\r\n"), Credentials(method="api_key", api_key=KEY)),
    ],
)
def test_load_forms(tmp_path: Path, text: str, expected: Credentials | None) -> None:
    assert make_store(tmp_path, text).load() == expected


def test_load_missing_file_and_folder(tmp_path: Path) -> None:
    assert ConfigTomlStore(tmp_path / "nope" / "config.toml").load() is None
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1795566585", 1795566585),
        ("1795566585.9", 1795566585),
        ("2026-11-25T10:00:00Z", 1795600800),
        ("2026-11-25T12:00:00+02:00", 1795600800),
        ("2026-11-25T10:00:00", 1795600800),  # a local datetime is read as UTC
        ('"2026-11-25T10:00:00Z"', 1795600800),
        ('"2026-11-25T12:00:00+02:00"', 1795600800),
    ],
)
def test_load_expires_at_forms(tmp_path: Path, value: str, expected: int) -> None:
    credentials = make_store(tmp_path, f'[auth]\naccess_token = "at"\nexpires_at = {value}\n').load()
    assert credentials is not None and credentials.expires_at == expected


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('expires_at = "soon"', "auth.expires_at"),
        ("expires_at = true", "auth.expires_at"),
        ("expires_at = [1]", "auth.expires_at"),
        ("expires_at = 2026-11-25", "auth.expires_at"),
        ("expires_at = nan", "auth.expires_at"),
        ("access_token = 5", "auth.access_token"),
        ("refresh_token = { a = 1 }", "auth.refresh_token"),
        ("issuer = false", "auth.issuer"),
    ],
)
def test_wrong_type_is_reported_and_never_overwritten(tmp_path: Path, line: str, key: str) -> None:
    text = f'[auth]\napi_key = "sk-secret-value"\n{line}\n'
    store = make_store(tmp_path, text)
    with pytest.raises(ConfigError, match=key) as info:
        store.load()
    assert str(store.path) in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(ConfigError, match=key):
        store.save_api_key(KEY)
    assert read(store) == text


@pytest.mark.parametrize("text", ['auth = "sk-x"\n', "[[auth]]\napi_key = 'k'\n"])
def test_auth_that_is_not_a_table(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="auth must be a table"):
        make_store(tmp_path, text).load()


def test_load_is_cached_on_file_identity(tmp_path: Path) -> None:
    store = make_store(tmp_path, KEY_BLOCK)
    first = store.load()
    assert store.load() is first
    store.save_api_key(OTHER_KEY)
    second = store.load()
    assert second is not first and second is not None and second.api_key == OTHER_KEY


def test_load_imports_neither_tomlkit_nor_filelock(tmp_path: Path) -> None:
    path = make_store(tmp_path, KEY_BLOCK).path
    code = (
        "import sys; from pathlib import Path; from webapp.stores import ConfigTomlStore; "
        f"assert ConfigTomlStore(Path({str(path)!r})).load() is not None; "
        "print(sorted({'tomlkit', 'filelock', 'fastapi', 'starlette'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# Writing: round trips and preserving the user's text


def test_save_api_key_to_new_file_in_new_folders(tmp_path: Path) -> None:
    store = ConfigTomlStore(tmp_path / "a" / "b" / "config.toml")
    assert store.save_api_key(f"  {KEY}\n") is None
    assert read(store) == KEY_BLOCK
    assert store.load() == Credentials(method="api_key", api_key=KEY)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert listing(store.path.parent) == ["config.toml", "config.toml.lock"]


def test_save_oauth_round_trip_and_method_switch(tmp_path: Path) -> None:
    store = make_store(tmp_path, USER_TEXT)
    assert store.save(TOKENS) is None
    assert read(store) == USER_TEXT + "\n" + OAUTH_BLOCK
    oauth = store.load()
    assert oauth == OAUTH and oauth.email == "ada@example.com"
    assert store.save_api_key(KEY) == oauth
    assert read(store) == USER_TEXT + "\n" + KEY_BLOCK
    assert store.save(TOKENS) == Credentials(method="api_key", api_key=KEY)
    assert read(store) == USER_TEXT + "\n" + OAUTH_BLOCK
    assert store.clear() == oauth
    assert read(store) == USER_TEXT
    assert store.clear() is None and read(store) == USER_TEXT


def test_save_oauth_leaves_out_missing_values(tmp_path: Path) -> None:
    store = make_store(tmp_path, OAUTH_BLOCK + "note = 1\n")
    tokens = Credentials.oauth(
        access_token="at2",
        refresh_token=None,
        expires_at=None,
        id_token=None,
        issuer="https://auth.example.com",
        client_id="app_test",
    )
    store.save(tokens)
    assert read(store) == '[auth]\naccess_token = "at2"\nissuer = "https://auth.example.com"\n' + (
        'client_id = "app_test"\nnote = 1\n'
    )


def test_user_text_around_auth_is_byte_identical(tmp_path: Path) -> None:
    head = '# top\nmodel = "x"\n\n'
    tail = '\n# about the sandbox\n[sandbox]  # trailing\nmode = "read-only"\n'
    store = make_store(
        tmp_path, head + "[auth] # mine\n# the login\napi_key = 'sk-old'\nkeep = true\n" + tail
    )
    store.save(TOKENS)
    body = OAUTH_BLOCK.removeprefix("[auth]\n")
    assert read(store) == head + "[auth] # mine\n# the login\nkeep = true\n" + body + tail
    store.save_api_key(KEY)
    assert read(store) == head + f'[auth] # mine\n# the login\nkeep = true\napi_key = "{KEY}"\n' + tail
    store.clear()
    assert read(store) == head + "[auth] # mine\n# the login\nkeep = true\n" + tail


def test_lines_tomlkit_would_rewrite_stay_byte_identical(tmp_path: Path) -> None:
    # tomlkit 0.15.2 drops the space in `[1979-05-27 ]` and `{ d = 1979-05-27 }` on any dump.
    text = 'dates = [1979-05-27 ]\nwhen = { d = 1979-05-27 }\n\n[auth]\napi_key = "sk-old"\n'
    store = make_store(tmp_path, text)
    store.save(TOKENS)
    assert read(store) == text.replace('api_key = "sk-old"\n', OAUTH_BLOCK.removeprefix("[auth]\n"))
    store.clear()
    assert read(store) == "dates = [1979-05-27 ]\nwhen = { d = 1979-05-27 }\n"


@pytest.mark.parametrize(
    ("text", "with_key", "cleared"),
    [
        (  # dotted keys stay dotted, in their place
            'a = 1\nauth.api_key = "sk-old"\nauth.note = "n"\nb = 2\n[x]\ny = 1\n',
            f'a = 1\nauth.api_key = "{KEY}"\nauth.note = "n"\nb = 2\n[x]\ny = 1\n',
            'a = 1\nauth.note = "n"\nb = 2\n[x]\ny = 1\n',
        ),
        (  # the dotted form disappears with its last key
            'a = 1\nauth.api_key = "sk-old"\n[x]\ny = 1\n',
            f'a = 1\nauth.api_key = "{KEY}"\n[x]\ny = 1\n',
            "a = 1\n[x]\ny = 1\n",
        ),
        (
            'auth = { api_key = "sk-old", note = 1 }\n[x]\ny = 1\n',
            f'auth = {{ api_key = "{KEY}", note = 1 }}\n[x]\ny = 1\n',
            "auth = {  note = 1 }\n[x]\ny = 1\n",
        ),
        ('auth = { api_key = "sk-old" }\n[x]\ny = 1\n', None, "[x]\ny = 1\n"),
        (  # a comment on the inline table's line is kept, with the table
            'auth = { api_key = "sk-old" }  # login\nz = 1\n',
            None,
            "auth = {  }  # login\nz = 1\n",
        ),
        (  # a split table keeps its parts where they are
            '[auth]\napi_key = "sk-old"\n[x]\ny = 1\n[auth.extra]\nq = 1\n',
            f'[auth]\napi_key = "{KEY}"\n[x]\ny = 1\n[auth.extra]\nq = 1\n',
            "[x]\ny = 1\n[auth.extra]\nq = 1\n",
        ),
    ],
)
def test_hand_written_forms_are_edited_in_place(
    tmp_path: Path, text: str, with_key: str | None, cleared: str
) -> None:
    store = make_store(tmp_path, text)
    assert store.load() == Credentials(method="api_key", api_key="sk-old")
    if with_key is not None:
        store.save_api_key(KEY)
        assert read(store) == with_key
        assert store.load() == Credentials(method="api_key", api_key=KEY)
    store.clear()
    assert read(store) == cleared
    assert store.load() is None


@pytest.mark.parametrize(
    ("text", "cleared"),
    [
        ('a = 1\n\n[auth]\napi_key = "k"\n', "a = 1\n"),
        ('[auth]\napi_key = "k"\n\n[x]\ny = 1\n', "[x]\ny = 1\n"),
        ('a = 1\n\n[auth]\napi_key = "k"\n\n[x]\ny = 1\n', "a = 1\n\n[x]\ny = 1\n"),
        # Comments after [auth]'s keys (usually about the next table) stay where they were.
        ('a = 1\n\n[auth]\napi_key = "k"\n# about x\n[x]\ny = 1\n', "a = 1\n\n# about x\n[x]\ny = 1\n"),
        ('[auth]\n# the login\napi_key = "k"\n\n# x\n[x]\n', "# the login\n\n# x\n[x]\n"),
        ('a = 1\n\n[auth]  # login\napi_key = "k"\n', "a = 1\n\n# login\n"),
        ('a = 1\n[auth]\napi_key = "k"\n   # indented\n', "a = 1\n   # indented\n"),
        # Unknown keys in [auth] keep it.
        ('[auth]\napi_key = "k"\nmine = 1 # c\n\n[x]\n', "[auth]\nmine = 1 # c\n\n[x]\n"),
        ('[auth]\naccess_token = "k"\n[auth.sub]\nq = 1\n', "[auth]\n[auth.sub]\nq = 1\n"),
    ],
)
def test_clear_drops_auth_and_keeps_comments(tmp_path: Path, text: str, cleared: str) -> None:
    store = make_store(tmp_path, text)
    assert store.clear() is not None
    assert read(store) == cleared
    assert tomllib.loads(cleared).get("auth", {}).keys().isdisjoint({"api_key", "access_token"})


def test_clear_without_file_creates_nothing(tmp_path: Path) -> None:
    assert ConfigTomlStore(tmp_path / "codex" / "config.toml").clear() is None
    assert listing(tmp_path) == []
    store = ConfigTomlStore(tmp_path / "config.toml")
    assert store.clear() is None
    assert not store.path.exists()


def test_unchanged_text_is_not_rewritten(tmp_path: Path) -> None:
    store = make_store(tmp_path, USER_TEXT)
    before = store.path.stat()
    assert store.clear() is None
    assert store.path.stat().st_ino == before.st_ino


def test_bom_and_crlf_are_kept(tmp_path: Path) -> None:
    original = "\ufeff" + USER_TEXT.replace("\n", "\r\n")
    store = make_store(tmp_path, original)
    store.save(TOKENS)
    assert read(store) == original + "\r\n" + OAUTH_BLOCK.replace("\n", "\r\n")
    store.save_api_key(KEY)
    assert read(store) == original + "\r\n" + KEY_BLOCK.replace("\n", "\r\n")
    store.clear()
    assert read(store) == original


def test_file_without_final_newline_gains_one(tmp_path: Path) -> None:
    store = make_store(tmp_path, 'model = "x"')
    store.save_api_key(KEY)
    assert read(store) == 'model = "x"\n\n' + KEY_BLOCK
    store.clear()
    assert read(store) == 'model = "x"\n'


def test_mode_becomes_0600(tmp_path: Path) -> None:
    store = make_store(tmp_path, USER_TEXT)
    store.path.chmod(0o644)
    store.save_api_key(KEY)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    store.path.chmod(0o644)
    store.save_api_key(KEY)  # the same text: not rewritten, still tightened
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_symlink_stays_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    (tmp_path / "home").mkdir()
    target = tmp_path / "dotfiles" / "codex.toml"
    target.write_text(USER_TEXT)
    link = tmp_path / "home" / "config.toml"
    link.symlink_to(target)
    store = ConfigTomlStore(link)
    store.save_api_key(KEY)
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == USER_TEXT + "\n" + KEY_BLOCK
    assert listing(tmp_path / "home") == ["config.toml", "config.toml.lock"]
    assert listing(tmp_path / "dotfiles") == ["codex.toml"]
    assert store.load() == Credentials(method="api_key", api_key=KEY)


# Writing: failures leave the file alone


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('model = "x"\n[auth\napi_key = "k"\n', 2),
        ('a = 1\nb = 2\nc = = 3\n[auth]\napi_key = "k"\n', 3),
        ('[auth]\napi_key = "k"\napi_key = "k2"\n', 3),
        ("a = 1\n[x]\nb = 1\n[x]\nc = 1\n", 4),
        ('a = "unclosed\n', 1),
    ],
)
def test_corrupt_file_is_never_overwritten(tmp_path: Path, text: str, line: int) -> None:
    store = make_store(tmp_path, text)
    for action in (
        store.load,
        lambda: store.save_api_key(KEY),
        lambda: store.save(TOKENS),
        store.clear,
    ):
        with pytest.raises(ConfigError) as info:
            action()
        assert str(store.path) in info.value.message and f"line {line}" in info.value.message
        assert read(store) == text
    assert listing(tmp_path) == ["config.toml", "config.toml.lock"]


def test_not_utf8(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.path.write_bytes(b'model = "x"\n# caf\xe9\n')
    for action in (store.load, lambda: store.save_api_key(KEY)):
        with pytest.raises(ConfigError, match=r"is not UTF-8 text \(line 2\)") as info:
            action()
        assert str(store.path) in info.value.message
    assert store.path.read_bytes() == b'model = "x"\n# caf\xe9\n'


def test_directory_instead_of_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.path.mkdir()
    for action in (store.load, lambda: store.save_api_key(KEY)):
        with pytest.raises(ConfigError, match="is a directory") as info:
            action()
        assert str(store.path) in info.value.message


@pytest.mark.parametrize(
    ("target", "error", "reason"),
    [
        ("fsync", errno.ENOSPC, "no space left on device"),
        ("fchmod", errno.EPERM, "operation not permitted"),
        ("replace", errno.EACCES, "permission denied"),
        ("mkstemp", errno.EROFS, "read-only file system"),
    ],
)
def test_write_failure_leaves_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, error: int, reason: str
) -> None:
    store = make_store(tmp_path, USER_TEXT)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(tempfile if target == "mkstemp" else os, target, fail)
    with pytest.raises(ConfigError) as info:
        store.save_api_key(KEY)
    monkeypatch.undo()
    assert info.value.message == f"cannot write {store.path}: {reason}"
    assert read(store) == USER_TEXT
    assert listing(tmp_path) == ["config.toml", "config.toml.lock"]


def test_lock_timeout(tmp_path: Path) -> None:
    store = ConfigTomlStore(tmp_path / "config.toml", lock_timeout=0.1)
    with FileLock(str(store.lock_path)):
        with pytest.raises(ConfigError, match="is locked by another process"):
            store.save_api_key(KEY)
    assert not store.path.exists()


# Values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (KEY, KEY),
        (f"  {KEY}\n", KEY),
        (f"\t{KEY}\r\n", KEY),
        ("x" * API_KEY_MAX, "x" * API_KEY_MAX),
        ("", None),
        (" \n\t", None),
        ("x" * (API_KEY_MAX + 1), None),
        (f"{KEY}\n[evil]", None),
        (f'{KEY}"\nx = "', None),
        (f"{KEY}\x00", None),
        (f"sk-\u202e{KEY}", None),
        ("sk-abc def", None),
        ("sk-abc\tdef", None),
        ("sk-ключ-0123456789", None),
        ("sk-abc\x7fdef", None),
    ],
)
def test_validate_api_key(raw: str, expected: str | None) -> None:
    if expected is not None:
        assert validate_api_key(raw) == expected
        return
    with pytest.raises(PortalError) as info:
        validate_api_key(raw)
    assert "sk-" not in info.value.message and "evil" not in info.value.message


def test_api_key_with_quotes_and_backslashes_round_trips(tmp_path: Path) -> None:
    key = 'sk-"quoted"\\back\\slash#hash=eq[x]'
    store = make_store(tmp_path, USER_TEXT)
    store.save_api_key(key)
    assert store.load() == Credentials(method="api_key", api_key=key)
    assert tomllib.loads(read(store))["auth"] == {"api_key": key}


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        (None, None),
        ("sk-proj-abcdefghwxyz", "sk-…wxyz"),
        ("abcdefghijklwxyz", "…wxyz"),
        ("sk-short", "… (8 characters)"),
        ("abcdefghijklmno", "… (15 characters)"),
    ],
)
def test_api_key_hint(key: str | None, hint: str | None) -> None:
    assert Credentials(method="api_key", api_key=key).api_key_hint == hint


@pytest.mark.parametrize(
    ("id_token", "email"),
    [
        (jwt({"email": "ada@example.com"}), "ada@example.com"),
        (jwt({"sub": "1"}), None),
        (jwt({"email": 5}), None),
        (jwt(["email"]), None),
        ("not-a-jwt", None),
        ("a.%%%%.c", None),
        ("a." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".c", None),
        (None, None),
    ],
)
def test_email(id_token: str | None, email: str | None) -> None:
    creds = Credentials.oauth(
        access_token="at", refresh_token=None, expires_at=None, id_token=id_token, issuer=None, client_id=None
    )
    assert creds.email == email


def test_expired() -> None:
    oauth = Credentials(method="oauth", access_token="at", expires_at=1000)
    assert oauth.expired(now=1000) and oauth.expired(now=1001) and not oauth.expired(now=999)
    assert oauth.expired()
    assert not Credentials(method="oauth", access_token="at").expired(now=10**12)
    assert not Credentials(method="api_key", api_key=KEY).expired(now=10**12)


def test_no_secret_in_repr() -> None:
    credentials = Credentials(
        "oauth",
        access_token="at-secret",
        refresh_token="rt-secret",
        id_token="id-secret",
        api_key="sk-secret",
    )
    assert "secret" not in repr(credentials) and "secret" not in repr(TOKENS)


# Transactions and concurrency


def test_transaction_reads_fresh_and_sees_its_own_writes(tmp_path: Path) -> None:
    store = make_store(tmp_path, KEY_BLOCK)
    with store.transaction() as tx:
        assert tx.credentials == Credentials(method="api_key", api_key=KEY)
        tx.save(TOKENS)
        assert tx.credentials is not None and tx.credentials.method == "oauth"
        tx.save(None)
        assert tx.credentials is None
    assert read(store) == ""


def increment(path: str, times: int) -> None:
    """Runs in another process: read-modify-write an unknown key, sometimes through the store too."""
    store = ConfigTomlStore(Path(path))
    for n in range(times):
        with store.transaction() as tx:
            doc = tomlkit.parse(Path(path).read_text())
            doc["auth"]["counter"] = int(doc["auth"]["counter"]) + 1
            Path(path).write_text(tomlkit.dumps(doc))
            if n % 10 == 0:
                tx.save(Credentials.key(f"sk-process-{os.getpid()}-{n:04d}-abcdef"))


def test_concurrent_transactions_lose_no_update(tmp_path: Path) -> None:
    store = make_store(tmp_path, USER_TEXT + f'\n[auth]\napi_key = "{KEY}"\ncounter = 0\n')
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=increment, args=(str(store.path), 50)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    data = tomllib.loads(read(store))
    assert data["auth"]["counter"] == 200
    assert read(store).startswith(USER_TEXT)


# Properties: any document without [auth] comes back byte for byte

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,6}", fullmatch=True)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=12)
STRINGS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x7f"), max_size=10
)
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats().map(repr),
    st.booleans().map(lambda b: str(b).lower()),
    STRINGS.map(lambda s: json.dumps(s, ensure_ascii=False)),  # JSON escapes are TOML escapes
    TEXT.filter(lambda s: "'" not in s).map(lambda s: f"'{s}'"),
    st.lists(STRINGS, max_size=3).map(
        lambda xs: '"""\n' + "\n".join(json.dumps(x, ensure_ascii=False)[1:-1] for x in xs) + '"""'
    ),
    st.sampled_from(["1979-05-27T07:32:00Z", "1979-05-27T00:32:00.999-07:00", "1979-05-27", "07:32:00"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(NAMES, inner), max_size=3, unique_by=lambda kv: kv[0]).map(
            lambda kvs: "{ " + ", ".join(f"{k} = {v}" for k, v in kvs) + " }"
        ),
    ),
    max_leaves=4,
)
SPACE = st.sampled_from(["", " ", "  ", "\t"])
FILLER = st.lists(st.one_of(SPACE, st.builds(lambda s, t: f"{s}#{t}", SPACE, TEXT)), max_size=2)


@st.composite
def documents(draw: st.DrawFn, *, with_auth: bool = False) -> str:
    """A TOML document laid out freely; names are made unique by a numeric suffix.

    Without [auth] unless with_auth: then a hand-written one (table, dotted or inline) holding one of
    our keys, an unknown key and comments, somewhere in the document.
    """
    lines: list[str] = []
    form = draw(st.sampled_from(["table", "dotted", "inline"])) if with_auth else None
    ours = draw(st.sampled_from(['api_key = "sk-old"', 'access_token = "at-old"\nexpires_at = 5']))

    def auth_lines() -> list[str]:
        mine = f"{draw(SPACE)}mine = {draw(VALUES)}"
        if form == "dotted":
            return [f"auth.{pair}" for pair in [*ours.splitlines(), mine.strip()]]
        if form == "inline":
            return ["auth = { " + ", ".join([*ours.splitlines(), mine.strip()]) + " }"]
        return ["[auth]", *draw(FILLER), *ours.splitlines(), *draw(FILLER), mine, *draw(FILLER)]

    def pairs(tag: str) -> None:
        for i, name in enumerate(draw(st.lists(NAMES, max_size=3))):
            key = draw(st.sampled_from([f"{name}{tag}{i}", f'"{name} {tag}{i}"', f"{name}{tag}{i}.d"]))
            comment = draw(st.one_of(st.just(""), TEXT.map(lambda t: f" #{t}")))
            lines.extend(draw(FILLER))
            lines.append(f"{draw(SPACE)}{key}{draw(SPACE)}={draw(SPACE)}{draw(VALUES)}{comment}")

    pairs("k")
    lines.extend(auth_lines() if form in ("dotted", "inline") else [])
    tables = draw(st.lists(NAMES, max_size=3))
    at = draw(st.integers(0, len(tables))) if form == "table" else -1
    for j, name in enumerate(tables):
        lines.extend(auth_lines() if j == at else [])
        header = draw(st.sampled_from([f"[{name}t{j}]", f"[{name}t{j}.sub]", f"[[{name}t{j}]]"]))
        for _ in range(2 if header.startswith("[[") and draw(st.booleans()) else 1):
            lines.extend(draw(FILLER))
            lines.append(f"{draw(SPACE)}{header}{draw(st.sampled_from(['', '  # header']))}")
            pairs(f"t{j}_")
    lines.extend(auth_lines() if at == len(tables) else [])
    lines.extend(draw(FILLER))
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "\n", ""]))
    text = text.replace("\n", "\r\n") if draw(st.booleans()) else text
    text = ("\ufeff" if draw(st.booleans()) else "") + text
    assert ("auth" in tomllib.loads(text.removeprefix("\ufeff"))) == with_auth
    return text


def non_auth(text: str) -> str:
    data = tomllib.loads(text.removeprefix("\ufeff"))
    data.pop("auth", None)
    return repr(data)  # repr: NaN equals NaN


def take_step(store: ConfigTomlStore, step: str) -> None:
    """One of the property tests' steps: "api_key", "oauth" or "clear"."""
    if step == "api_key":
        store.save_api_key(KEY)
    elif step == "oauth":
        store.save(TOKENS)
    else:
        store.clear()


def with_store(text: str, steps: list[str]) -> tuple[str, str]:
    """The file after each step, run on a fresh file holding text."""
    with tempfile.TemporaryDirectory() as folder:
        store = ConfigTomlStore(Path(folder) / "config.toml")
        store.path.write_bytes(text.encode())
        results = []
        for step in steps:
            take_step(store, step)
            results.append(read(store))
        assert listing(Path(folder)) == ["config.toml", "config.toml.lock"]
        return results[0], results[-1]


def restored(original: str) -> str:
    """What clear gives back: the original, plus a final newline if it had none."""
    body = original.removeprefix("\ufeff")
    return original if body == "" or body.endswith("\n") else original + ("\r\n" if "\r\n" in body else "\n")


FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(documents())
def test_property_save_api_key_only_appends_auth(original: str) -> None:
    saved, _ = with_store(original, ["api_key"])
    body = original.removeprefix("\ufeff")
    newline = "\r\n" if "\r\n" in body else "\n"
    separator = "" if body == "" else newline if body.endswith("\n") else newline * 2
    assert saved.startswith(original)
    assert saved[len(original) :] == separator + KEY_BLOCK.replace("\n", newline)
    assert non_auth(saved) == non_auth(original)
    assert tomllib.loads(saved.removeprefix("\ufeff"))["auth"] == {"api_key": KEY}


@FAST
@given(documents())
def test_property_save_then_clear_restores_bytes(original: str) -> None:
    assert with_store(original, ["api_key", "clear"])[1] == restored(original)


@FAST
@given(documents())
def test_property_oauth_then_key_then_clear_restores_bytes(original: str) -> None:
    assert with_store(original, ["oauth", "api_key", "clear"])[1] == restored(original)


@FAST
@given(
    documents(with_auth=True),
    st.lists(st.sampled_from(["oauth", "api_key", "clear"]), min_size=1, max_size=3),
)
def test_property_hand_written_auth_keeps_everything_else(original: str, steps: list[str]) -> None:
    unknown = tomllib.loads(original.removeprefix("\ufeff"))["auth"]["mine"]
    with tempfile.TemporaryDirectory() as folder:
        store = ConfigTomlStore(Path(folder) / "config.toml")
        store.path.write_bytes(original.encode())
        for step in steps:
            take_step(store, step)
            text = read(store)
            assert non_auth(text) == non_auth(original)
            assert repr(tomllib.loads(text.removeprefix("\ufeff"))["auth"]["mine"]) == repr(unknown)
            credentials = store.load()
            assert credentials is None if step == "clear" else credentials is not None
            assert credentials is None or credentials.method == ("oauth" if step == "oauth" else "api_key")
        assert text.startswith("\ufeff") == original.startswith("\ufeff")
        if "\n" in text:  # one line left without its line break has no ending to keep
            assert ("\r\n" in text) == ("\r\n" in original)


def test_a_symlink_is_resolved_once_per_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link pointed elsewhere between the read and the replace: the file that was read is the
    one replaced, and the other file is not touched (it would otherwise get the first one's lines)."""
    import webapp.tomledit

    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('model = "first"\n')
    second.write_text('model = "second"\n')
    link = tmp_path / "config.toml"
    link.symlink_to(first)
    original = webapp.tomledit.edit_auth

    def repointing(path: Path, text: str, values: object) -> str:
        link.unlink()
        link.symlink_to(second)  # someone repoints the link while we edit
        return original(path, text, values)  # type: ignore[arg-type]

    monkeypatch.setattr(webapp.tomledit, "edit_auth", repointing)
    ConfigTomlStore(link).save_api_key(KEY)
    assert first.read_text() == f'model = "first"\n\n[auth]\napi_key = "{KEY}"\n'
    assert second.read_text() == 'model = "second"\n'
