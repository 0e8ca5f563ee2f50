from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import read_until
from webapp.cli import main
from webapp.settings import Settings

KEY = "sk-test-0123456789abcdefwxyz"


@pytest.fixture(autouse=True)
def codex_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex"))
    for name in ("CODEX_PORTAL_ISSUER", "CODEX_PORTAL_CLIENT_ID", "CODEX_PORTAL_SCOPE", "CODEX_PORTAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "codex"


def test_status_signed_out(capsys: pytest.CaptureFixture[str], codex_home: Path) -> None:
    assert main(["status"]) == 1
    assert "Not signed in" in capsys.readouterr().out
    assert main(["status", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "signed_in": False,
        "method": None,
        "expires_at": None,
        "expired": False,
        "email": None,
        "api_key_hint": None,
        "config_path": str(codex_home / "config.toml"),
        "codex_cli": {
            "store": "file",
            "path": str(codex_home / "auth.json"),
            "signed_in": False,
            "in_sync": True,
        },
    }


def test_api_key_from_stdin_then_status_token_logout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, codex_home: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"  {KEY}\n"))
    assert main(["login", "--api-key"]) == 0
    err = capsys.readouterr().err
    assert "sk-…wxyz" in err and KEY not in err
    assert tomllib.loads((codex_home / "config.toml").read_text())["auth"] == {"api_key": KEY}
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "api_key" and report["api_key_hint"] == "sk-…wxyz"
    assert main(["token"]) == 0
    assert capsys.readouterr().out.strip() == KEY
    assert main(["logout"]) == 0
    assert "Signed out" in capsys.readouterr().err
    assert main(["status"]) == 1


@pytest.mark.parametrize("raw", ["", "\n", "sk-abc\n[evil]\n", "sk-\x00abc", "k" * 70_000])
def test_bad_api_key_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, raw: str, codex_home: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(raw))
    assert main(["login", "--api-key"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "evil" not in err
    assert not (codex_home / "config.toml").exists()


@pytest.mark.parametrize(
    "argv",
    [["login", "--api-key", KEY], ["login", KEY], ["login", f"--api-key={KEY}"], [KEY], ["status", KEY]],
)
def test_api_key_is_never_taken_from_argv_nor_repeated(
    argv: list[str], capsys: pytest.CaptureFixture[str], codex_home: Path
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert KEY not in out + err and "usage:" in err
    if argv[0] == "login" and "=" not in argv[1]:
        assert "an API key is never taken from the command line" in err
    assert not codex_home.exists()


@pytest.mark.parametrize(
    ("argv", "usage", "message"),
    [
        (["--port", "0"], "codex-portal serve", "invalid port '0'"),
        (["--port", "http"], "codex-portal serve", "invalid port 'http'"),
        (["status", "--bogus"], "codex-portal status", "unrecognized arguments: --bogus"),
        (["status", "--json=yes"], "codex-portal status", "argument --json: takes no value"),
        (["login", "--device", "--api-key"], "codex-portal login", "not allowed with argument"),
        (["stauts"], "codex-portal [-h]", "unknown command 'stauts': use one of serve, login, status"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], usage: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage}") and message in err, err


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_variable_counts_as_unset(empty: str) -> None:
    names = ["CODEX_PORTAL_ISSUER", "CODEX_PORTAL_CLIENT_ID", "CODEX_PORTAL_SCOPE"]
    names += ["CODEX_PORTAL_PORT", "CODEX_PORTAL_CODEX_SYNC"]
    assert Settings.from_env(dict.fromkeys(names, empty)) == Settings.from_env({})
    # CODEX_HOME as the Codex CLI reads it: empty is unset; blank is a path ("CODEX_HOME points to
    # "  ", but that path does not exist", says `codex login status`), never ~/.codex behind its back.
    home = Settings.from_env({"CODEX_HOME": empty}).codex_home
    assert home == (Path(empty) if empty else Path.home() / ".codex")
    set_ = Settings.from_env(
        {"CODEX_PORTAL_CLIENT_ID": " app_x ", "CODEX_PORTAL_ISSUER": "http://127.0.0.1:9"}
    )
    assert (set_.client_id, set_.issuer) == ("app_x", "http://127.0.0.1:9")


def test_a_bad_port_in_the_environment_is_named_and_stops_only_what_listens(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEX_PORTAL_PORT", "abc")
    assert main(["status"]) == 1
    assert "Not signed in" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY))
    assert main(["login", "--api-key"]) == 0
    capsys.readouterr()
    assert main(["serve", "--no-browser"]) == 1
    assert capsys.readouterr().err == (
        "Error: invalid port 'abc' in CODEX_PORTAL_PORT: use a number from 1 to 65535.\n"
    )


def test_ctrl_d_at_the_key_prompt_changes_nothing(codex_home: Path) -> None:
    """On a real terminal (a pty): the hidden prompt, then Ctrl-D: one line, no traceback."""
    import pty

    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "webapp", "login", "--api-key"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=os.environ.copy(),
        start_new_session=True,  # the pty becomes its controlling terminal, as getpass wants
    ) as proc:
        os.close(follower)
        output = read_until(leader, b"API key (input hidden): ")
        os.write(leader, b"\x04")
        output += read_until(leader, b"")  # to EOF: the process exited
        assert proc.wait(timeout=30) == 1
    os.close(leader)
    text = output.decode()
    assert "Error: no API key given; nothing was changed" in text and "Traceback" not in text, text
    assert not codex_home.exists()


def test_token_when_signed_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token"]) == 1
    assert capsys.readouterr().err.startswith("Error: not signed in")


def test_corrupt_config_names_file_and_line(capsys: pytest.CaptureFixture[str], codex_home: Path) -> None:
    codex_home.mkdir()
    (codex_home / "config.toml").write_text('model = "o3"\n[auth\n')
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert str(codex_home / "config.toml") in err and "line 2" in err
    assert (codex_home / "config.toml").read_text() == 'model = "o3"\n[auth\n'


def test_remote_bind_needs_allow_remote(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--no-browser", "--host", "0.0.0.0"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_taken_port_is_a_clear_error(codex_home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "webapp", "serve", "--no-browser", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "CODEX_PORTAL_ISSUER": "http://127.0.0.1:9"},
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: port {port} is already in use, by another program or by a codex-portal serving "
        "another CODEX_HOME (it gives no link to this one); stop it or choose another with --port."
    )


def test_status_does_not_import_the_web_stack(codex_home: Path) -> None:
    heavy = ("fastapi", "starlette", "uvicorn", "httpx2", "authlib", "tomlkit", "jinja2")
    code = (
        "import sys; from webapp.cli import main; main(['status']); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("auth", "code", "headline"),
    [
        (
            'access_token = "at"\nexpires_at = 1000\n',
            1,
            "Session expired, and it cannot be refreshed: sign in again.",
        ),
        ('access_token = "at"\nrefresh_token = "rt"\nexpires_at = 1000\n', 0, "Signed in with OAuth."),
        (f'access_token = "at"\nexpires_at = {2**31}\n', 0, "Signed in with OAuth."),
    ],
)
def test_expired_past_refresh_is_not_signed_in(
    auth: str, code: int, headline: str, capsys: pytest.CaptureFixture[str], codex_home: Path
) -> None:
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(f"[auth]\n{auth}")
    assert main(["status"]) == code
    out = capsys.readouterr().out
    assert out.splitlines()[0] == headline and "access token expires" in out
    assert main(["status", "--json"]) == code
    report = json.loads(capsys.readouterr().out)
    assert report["signed_in"] is (code == 0) and report["method"] == "oauth"
    assert report["expired"] is ("1000" in auth)


def test_a_codex_home_that_cannot_be_a_folder_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    for home, message in (
        (afile, f"Error: {afile} is not a folder: CODEX_HOME must name a folder.\n"),
        (
            afile / "codex",
            f"Error: {afile} is not a folder, so CODEX_HOME ({afile / 'codex'}) cannot be made inside it.\n",
        ),
    ):
        monkeypatch.setenv("CODEX_HOME", str(home))
        monkeypatch.setattr(sys, "stdin", io.StringIO(KEY))
        assert main(["login", "--api-key"]) == 1
        assert capsys.readouterr().err == message
    assert afile.read_text() == "not a folder\n"
